"""Local refinement improves planted particles' z-scores and pose errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from corrscan.core.rotations import angular_distance, euler_to_matrix
from corrscan.match2d import match_template, refine_template
from corrscan.match2d.config import RefineConfig
from corrscan.match2d.peaks import extract_peaks, peaks_to_dataframe
from corrscan.match2d.refine import constrained_search, local_orientation_offsets
from corrscan.synthetic.micrograph import example_template, simulate_micrograph

PX = 1.5
OPTICS = {"pixel_size": PX, "defocus_u": 8000.0, "defocus_v": 8000.0}
PRE = {"bandpass_filter": {"enabled": True, "low_freq_cutoff": 0.15}}
DF = {"defocus_min": -400.0, "defocus_max": 400.0, "defocus_step": 400.0}


def _err(a, b):
    ra = euler_to_matrix(torch.as_tensor(np.asarray(a, dtype=np.float64)).reshape(-1, 3))
    rb = euler_to_matrix(torch.as_tensor(np.asarray(b, dtype=np.float64)).reshape(-1, 3))
    return np.asarray(angular_distance(ra, rb))


@pytest.fixture(scope="module")
def searched():
    vol = example_template(32, n_atoms=800, atom_sigma=0.7, seed=0)
    img, truth = simulate_micrograph(
        vol, shape=(128, 128), pixel_size=PX, n_particles=3, defocus_u=8000.0,
        relative_defocus=[100.0, -150.0, 250.0], signal_scale=8.0, colored_noise_std=2.0,
        seed=11,
    )  # fmt: skip
    res = match_template(
        img, vol, optics=OPTICS, defocus_search=DF,
        orientation_search={"psi_step": 15.0, "theta_step": 15.0}, preprocessing=PRE,
        progress=False,
    )  # fmt: skip
    table = peaks_to_dataframe(extract_peaks(res), res)
    return img, vol, truth, res, table


def _pair(truth: pd.DataFrame, table: pd.DataFrame) -> list[tuple[int, int]]:
    pairs = []
    for i, t in truth.iterrows():
        d = np.hypot(table["pos_y"] - t["y_corner"], table["pos_x"] - t["x_corner"])
        if len(d) and d.min() <= 2:
            pairs.append((i, int(np.argmin(d))))
    return pairs


def test_local_offsets_include_identity():
    off = local_orientation_offsets(RefineConfig().orientation_refinement)
    assert torch.equal(off[0], torch.zeros(3, dtype=torch.float64))
    assert off.shape[0] > 100


def test_refinement_improves_zscores_and_angles(searched):
    img, vol, truth, res, table = searched
    pairs = _pair(truth, table)
    assert len(pairs) >= 2
    cfg = RefineConfig(
        orientation_refinement={
            "phi_step_coarse": 8.0, "theta_step_coarse": 8.0, "psi_step_coarse": 8.0,
            "phi_step_fine": 4.0, "theta_step_fine": 4.0, "psi_step_fine": 4.0,
        },
        defocus_refinement={"defocus_min": -200, "defocus_max": 200, "defocus_step": 100},
        box_margin=2,
    )  # fmt: skip
    ref = refine_template(img, vol, table, res, config=cfg, preprocessing=PRE)
    assert len(ref) == len(table)
    before, after, e0, e1 = [], [], [], []
    for i, k in pairs:
        t, f = truth.loc[i], ref.iloc[k]
        before.append(f["scaled_mip"])
        after.append(f["refined_scaled_mip"])
        e0.append(_err([f["phi"], f["theta"], f["psi"]], [t["phi"], t["theta"], t["psi"]])[0])
        e1.append(
            _err(
                [f["refined_phi"], f["refined_theta"], f["refined_psi"]],
                [t["phi"], t["theta"], t["psi"]],
            )[0]
        )
        assert (
            abs(f["refined_pos_y_img"] - t["y"]) <= 1 and abs(f["refined_pos_x_img"] - t["x"]) <= 1
        )
    assert all(a > b for a, b in zip(after, before, strict=True))
    assert np.mean(e1) < np.mean(e0)
    assert max(e1) < 8.0


def test_constrained_search_finds_partner():
    """A second copy rotated 20° about z and offset by a known vector is found from the first."""
    vol = example_template(32, n_atoms=800, atom_sigma=0.7, seed=0)
    ref_ang = np.array([30.0, 50.0, 110.0])
    r_ref = euler_to_matrix(torch.tensor(ref_ang))
    from corrscan.core.rotations import matrix_to_euler
    from corrscan.match2d.refine import _axis_rotation

    partner = matrix_to_euler(r_ref @ _axis_rotation(torch.tensor([0.0, 0.0, 1.0]), 20.0))
    c_vec = torch.tensor([40.0 * PX, 10.0 * PX, 0.0], dtype=torch.float64)  # Å, map frame
    shift = r_ref.T @ c_vec / PX  # sample-frame (x, y, z) pixels
    y0, x0 = 50, 45
    y1, x1 = round(y0 + float(shift[1])), round(x0 + float(shift[0]))
    img, _ = simulate_micrograph(
        vol, shape=(144, 144), pixel_size=PX, positions=[[y0, x0], [y1, x1]],
        orientations=np.stack([ref_ang, partner.numpy()]), defocus_u=8000.0,
        relative_defocus=[0.0, float(shift[2]) * PX], signal_scale=8.0, colored_noise_std=2.0,
        seed=4,
    )  # fmt: skip
    res = match_template(
        img, vol, optics=OPTICS, defocus_search={"enabled": False},
        orientation_search={"psi_step": 30.0, "theta_step": 30.0}, preprocessing=PRE,
        progress=False,
    )  # fmt: skip
    refs = pd.DataFrame(
        {"pos_y": [y0 - 16], "pos_x": [x0 - 16], "phi": [ref_ang[0]], "theta": [ref_ang[1]],
         "psi": [ref_ang[2]], "relative_defocus": [0.0]}
    )  # fmt: skip
    out = constrained_search(
        img, vol, refs, res, preprocessing=PRE,
        config={"center_vector": tuple(c_vec.tolist()), "rotation_axis": (0, 0, 1),
                "axis_range": 30.0, "axis_step": 5.0},
    )  # fmt: skip
    row = out.iloc[0]
    assert abs(row["axis_angle"] - 20.0) <= 5.0
    assert abs(row["refined_pos_y"] + 16 - y1) <= 1 and abs(row["refined_pos_x"] + 16 - x1) <= 1


def test_template_pixel_size_optimisation():
    """Atoms rendered at the true pixel size give the best score among trial pixel sizes."""
    from corrscan.match2d.refine import optimize_template_pixel_size
    from corrscan.synthetic.density import pseudo_atom_positions, render_gaussians

    atoms = pseudo_atom_positions(700, radius=16.0, min_distance=1.5, seed=3)  # Å, centred
    true_px = 1.5
    vol = render_gaussians(atoms / true_px + 16, 32, sigma=1.0 / true_px).numpy()
    grid = {"psi_step": 20.0, "theta_step": 20.0}
    from corrscan.match2d.config import OrientationSearchConfig

    angles = OrientationSearchConfig(**grid).angles()
    pick = angles[np.random.default_rng(0).choice(len(angles), 3, replace=False)].numpy()
    img, truth = simulate_micrograph(
        vol, shape=(128, 128), pixel_size=true_px, n_particles=3, orientations=pick,
        defocus_u=8000.0, signal_scale=4.0, colored_noise_std=2.0, seed=8,
    )  # fmt: skip
    res = match_template(
        img, vol, optics=OPTICS, defocus_search={"enabled": False}, orientation_search=grid,
        preprocessing=PRE, progress=False,
    )  # fmt: skip
    parts = pd.DataFrame(
        {"pos_y": truth["y_corner"], "pos_x": truth["x_corner"], "phi": truth["phi"],
         "theta": truth["theta"], "psi": truth["psi"], "relative_defocus": 0.0}
    )  # fmt: skip
    best, log = optimize_template_pixel_size(
        img, atoms, parts, res, box=32, atom_sigma=1.0, coarse_range=0.06, coarse_step=0.02,
        fine_step=0.005,
    )  # fmt: skip
    assert abs(best - true_px) <= 0.01 * true_px
    assert len(log) >= 5 and log["score"].idxmax() == log["pixel_size"].sub(best).abs().idxmin()
