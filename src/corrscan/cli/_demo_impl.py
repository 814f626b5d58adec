"""``corrscan demo``: a 2D template search on the built-in simulated example.

Simulates a micrograph with planted particles (known positions, poses, defocus), runs the full
search (orientations x defocus), picks particles with Leopard-EM's z-score cut-off, refines
them locally, prints planted vs found, and writes the result bundle, a particle table (CSV +
STAR) and plots into ``--out``. Sized to finish in about a minute on 2 CPU cores.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import typer

# The built-in example (Å, degrees): a 32-voxel asymmetric pseudo-atomic map at 1.5 Å/voxel,
# a 384x384 micrograph with 8 particles at random poses and three heights, 15° orientation
# grid, 3 defocus planes. The high-pass removes the low-resolution blob that all views of such a
# small particle share (it would inflate the per-pixel variance; docs/match2d.md).
EXAMPLE = {
    "box": 32,
    "n_atoms": 800,
    "atom_sigma": 0.7,
    "shape": (384, 384),
    "pixel_size": 1.5,
    "defocus": 8000.0,
    "n_particles": 8,
    "relative_defocus": (-300.0, 0.0, 300.0),
    "signal_scale": 12.0,
    "noise_std": 1.0,
    "colored_noise_std": 2.0,
    "psi_step": 15.0,
    "theta_step": 15.0,
    "defocus_step": 300.0,
    "highpass": 0.15,
}


def _angle_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from corrscan.core.rotations import angular_distance, euler_to_matrix

    ra = euler_to_matrix(torch.as_tensor(a, dtype=torch.float64).reshape(-1, 3))
    rb = euler_to_matrix(torch.as_tensor(b, dtype=torch.float64).reshape(-1, 3))
    return np.asarray(angular_distance(ra, rb))


def match_planted(truth: pd.DataFrame, found: pd.DataFrame, *, tol: float = 3.0) -> pd.DataFrame:
    """Pair each planted particle with the nearest pick (map pixels) within ``tol`` px."""
    rows = []
    for _, t in truth.iterrows():
        row = {
            "planted_y": int(t["y_corner"]),
            "planted_x": int(t["x_corner"]),
            "found": False,
        }
        if len(found):
            d = np.hypot(found["pos_y"] - t["y_corner"], found["pos_x"] - t["x_corner"])
            k = int(np.argmin(d))
            if d.iloc[k] <= tol:
                f = found.iloc[k]
                row.update(
                    found=True,
                    z=float(f["scaled_mip"]),
                    pos_err=float(d.iloc[k]),
                    angle_err=float(
                        _angle_error(
                            np.array([f["phi"], f["theta"], f["psi"]]),
                            np.array([t["phi"], t["theta"], t["psi"]]),
                        )[0]
                    ),
                    defocus_err=float(f["relative_defocus"] - t["relative_defocus"]),
                    index=k,
                )
        rows.append(row)
    return pd.DataFrame(rows)


def run_demo(out: str = "corrscan-demo", seed: int = 0) -> None:
    """Simulate, search, pick, refine, report; write everything into ``out``."""
    from corrscan.core.io import write_mrc
    from corrscan.match2d import match_template, refine_template
    from corrscan.match2d.config import PeakConfig, RefineConfig
    from corrscan.match2d.peaks import write_star
    from corrscan.match2d.pipeline import find_particles, zscore_cutoff
    from corrscan.match2d.plot import plot_result
    from corrscan.synthetic.micrograph import example_template, simulate_micrograph

    ex = EXAMPLE
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    vol = example_template(ex["box"], n_atoms=ex["n_atoms"], atom_sigma=ex["atom_sigma"], seed=seed)
    rng = np.random.default_rng(seed)
    n = ex["n_particles"]
    rel = np.array([ex["relative_defocus"][i % 3] for i in range(n)])
    img, truth = simulate_micrograph(
        vol,
        shape=ex["shape"],
        pixel_size=ex["pixel_size"],
        n_particles=n,
        defocus_u=ex["defocus"],
        relative_defocus=rel,
        signal_scale=ex["signal_scale"],
        noise_std=ex["noise_std"],
        colored_noise_std=ex["colored_noise_std"],
        min_distance=ex["box"] * 1.2,
        seed=int(rng.integers(1 << 31)),
    )
    write_mrc(out_dir / "micrograph.mrc", img, ex["pixel_size"])
    write_mrc(out_dir / "template.mrc", vol, ex["pixel_size"])
    truth.to_csv(out_dir / "planted.csv", index=False)
    typer.echo(
        f"simulated {ex['shape'][0]}x{ex['shape'][1]} micrograph ({ex['pixel_size']} Å/px), "
        f"{n} particles of a {ex['box']}³ map, defocus {ex['defocus']:.0f} Å "
        f"± {ex['defocus_step']:.0f}"
    )

    optics = {
        "pixel_size": ex["pixel_size"],
        "defocus_u": ex["defocus"],
        "defocus_v": ex["defocus"],
    }
    ds = {
        "defocus_min": -ex["defocus_step"],
        "defocus_max": ex["defocus_step"],
        "defocus_step": ex["defocus_step"],
    }
    os_cfg = {"psi_step": ex["psi_step"], "theta_step": ex["theta_step"]}
    pre = {"bandpass_filter": {"enabled": True, "low_freq_cutoff": ex["highpass"]}}
    res = match_template(
        img, vol, optics=optics, defocus_search=ds, orientation_search=os_cfg, preprocessing=pre
    )
    t = res.metadata["timings"]
    typer.echo(
        f"searched {res.metadata['total_orientations']:,} orientations x "
        f"{res.metadata['total_defocus']} defocus = {res.total_correlations:,} CCGs/pixel in "
        f"{t['search_s']:.1f} s ({t['ccg_per_s']:,.0f} CCG/s)"
    )
    peaks_cfg = PeakConfig()
    found = find_particles(res, peaks_cfg, micrograph_path=str(out_dir / "micrograph.mrc"))
    cut = zscore_cutoff(res, peaks_cfg)
    res.tables["particles"] = found
    res.metadata["zscore_cutoff"] = cut
    typer.echo(f"z-score cut-off {cut:.2f} (1 false positive expected): {len(found)} picks")

    refined = refine_template(
        img,
        vol,
        found,
        res,
        config=RefineConfig(
            orientation_refinement={
                "phi_step_coarse": ex["theta_step"] / 2,
                "theta_step_coarse": ex["theta_step"] / 2,
                "psi_step_coarse": ex["psi_step"] / 2,
                "phi_step_fine": 2.0,
                "theta_step_fine": 2.0,
                "psi_step_fine": 2.0,
            },
            defocus_refinement={"defocus_min": -150, "defocus_max": 150, "defocus_step": 75},
            box_margin=2,
        ),
        preprocessing=pre,
    )
    res.tables["refined"] = refined
    res.save(out_dir / "result", overwrite=True)
    found.to_csv(out_dir / "particles.csv", index=False)
    write_star(refined, out_dir / "particles.star")
    plot_result(res, out_dir / "plots", particles=found, cutoff=cut)

    rep = match_planted(truth, found)
    typer.echo("")
    typer.echo(
        f"{'planted (y, x)':>15} {'found':>6} {'z':>6} {'z ref':>6} {'pos err':>8} "
        f"{'ang err':>8} {'ang ref':>8} {'df err':>7} {'df ref':>7}"
    )
    for _, r in rep.iterrows():
        if not r["found"]:
            typer.echo(f"{(r['planted_y'], r['planted_x'])!s:>15} {'no':>6}")
            continue
        f = refined.iloc[int(r["index"])]
        t_row = truth[(truth["y_corner"] == r["planted_y"]) & (truth["x_corner"] == r["planted_x"])]
        t_row = t_row.iloc[0]
        ang_ref = _angle_error(
            np.array([f["refined_phi"], f["refined_theta"], f["refined_psi"]]),
            np.array([t_row["phi"], t_row["theta"], t_row["psi"]]),
        )[0]
        df_ref = f["refined_relative_defocus"] - t_row["relative_defocus"]
        typer.echo(
            f"{(r['planted_y'], r['planted_x'])!s:>15} {'yes':>6} {r['z']:6.2f} "
            f"{f['refined_scaled_mip']:6.2f} {r['pos_err']:6.1f}px {r['angle_err']:7.1f}° "
            f"{ang_ref:7.1f}° {r['defocus_err']:6.0f}Å {df_ref:6.0f}Å"
        )
    n_found = int(rep["found"].sum())
    n_false = len(found) - n_found
    typer.echo("")
    typer.echo(
        f"found {n_found}/{len(truth)} planted particles, {n_false} other pick(s); "
        f"grid steps: {ex['theta_step']}° (angles), {ex['defocus_step']:.0f} Å (defocus)"
    )
    typer.echo(
        f"wrote {out_dir}/ (result bundle, particles.csv/.star, plots/) in "
        f"{time.perf_counter() - t0:.0f} s"
    )
