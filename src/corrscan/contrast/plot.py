"""Diagnostic plot: histogram of the sampled voxels with the contrast limits marked."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from corrscan.contrast.limits import ContrastReport
from corrscan.errors import InputError

__all__ = ["plot_contrast_histogram"]


def plot_contrast_histogram(
    report: ContrastReport,
    path: str | os.PathLike[str],
    *,
    n_bins: int = 256,
    title: str | None = None,
) -> Path:
    """Save a histogram of ``report.sample`` (log counts) with the limits as vertical lines.

    For GMM reports the fitted components are drawn as scaled densities. The x range is the
    limits widened by their width on each side (outliers beyond it are counted in the edge
    bins). Needs a report made with ``keep_sample=True``. Returns the written path.
    """
    if report.sample is None:
        raise InputError("the report has no sample: call contrast_report(..., keep_sample=True)")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    lo, hi = report.limits
    width = max(hi - lo, 1e-12)
    smin, smax = report.sample_range
    xlo = max(smin, lo - width)
    xhi = min(smax, hi + width)
    if xhi <= xlo:
        xlo, xhi = xlo - 0.5, xhi + 0.5
    values = np.clip(report.sample, xlo, xhi)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    counts, edges, _ = ax.hist(
        values, bins=n_bins, range=(xlo, xhi), color="0.6", label="sampled voxels"
    )
    if report.method == "gmm" and "means" in report.details:
        x = np.linspace(xlo, xhi, 800)
        bw = edges[1] - edges[0]
        n = report.n_samples
        d = report.details
        for k, (w, m, s) in enumerate(zip(d["weights"], d["means"], d["stds"], strict=True)):
            if s <= 0:
                continue
            pdf = w * np.exp(-0.5 * ((x - m) / s) ** 2) / (s * np.sqrt(2 * np.pi))
            style = "-" if k == d["chosen_component"] else ":"
            ax.plot(x, n * bw * pdf, style, lw=1.2, label=f"component {k} (μ={m:.3g}, σ={s:.3g})")
    for v, lab in ((lo, f"low {lo:.4g}"), (hi, f"high {hi:.4g}")):
        ax.axvline(v, color="crimson", lw=1.5, label=lab)
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.5)
    ax.set_xlabel("voxel value (data units)")
    ax.set_ylabel("count")
    z0, z1 = report.z_range
    ax.set_title(
        title or f"{report.method} limits, slices {z0}..{z1 - 1}, {report.n_samples} voxels"
    )
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    del counts
    return out
