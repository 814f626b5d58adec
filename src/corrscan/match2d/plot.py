"""Figures of a 2D template search: MIP and z-score maps with picks, z-score survival plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["plot_maps", "plot_result", "plot_survival"]


def plot_maps(result: Any, particles: pd.DataFrame | None, path: str | Path) -> Path:
    """Side-by-side MIP and z-score images (map pixels) with the picks circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5), constrained_layout=True)
    for ax, name in zip(axes, ("mip", "scaled_mip"), strict=True):
        m = result.maps[name].numpy()
        im = ax.imshow(m, cmap="gray", origin="upper")
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(f"{name} ({m.shape[0]}x{m.shape[1]}, {result.pixel_size:.3g} Å/px)")
        if particles is not None and len(particles):
            ax.scatter(
                particles["pos_x"],
                particles["pos_y"],
                s=80,
                facecolors="none",
                edgecolors="tab:red",
                linewidths=1.2,
            )
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_survival(result: Any, path: str | Path, *, cutoff: float | None = None) -> Path:
    """Survival function of the z-score map (pixels with ``z >= x``) on a log axis, against
    the Gaussian expectation for the MIP of ``total_correlations`` independent standard
    normal correlations per pixel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    z = np.sort(result.maps["scaled_mip"].numpy().ravel())[::-1]
    n_pix = z.size
    count = np.arange(1, n_pix + 1)
    x = np.linspace(float(z.min()), float(max(z.max(), 1.0)), 400)
    n_ccg = max(int(result.total_correlations), 1)
    # MIP of n_ccg standard normals: P(max >= x) = 1 - Phi(x)^n_ccg
    expected = n_pix * -np.expm1(n_ccg * norm.logcdf(x))
    fig, ax = plt.subplots(figsize=(6, 4.5), constrained_layout=True)
    ax.step(z, count, where="post", label="z-score map")
    ax.plot(x, expected, "--", label=f"Gaussian noise, {n_ccg:,} CCGs/pixel")
    if cutoff is not None:
        ax.axvline(cutoff, color="tab:red", lw=1, label=f"cut-off {cutoff:.2f}")
    ax.set_yscale("log")
    ax.set_ylim(0.5, n_pix * 2)
    ax.set_xlabel("z-score (scaled MIP)")
    ax.set_ylabel("pixels with z >= x")
    ax.legend()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_result(
    result: Any,
    out_dir: str | Path,
    *,
    particles: pd.DataFrame | None = None,
    cutoff: float | None = None,
) -> list[Path]:
    """Write ``maps.png`` and ``zscore_survival.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        plot_maps(result, particles, out / "maps.png"),
        plot_survival(result, out / "zscore_survival.png", cutoff=cutoff),
    ]
