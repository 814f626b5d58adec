"""Bead simulator: geometry conventions, exact sub-pixel shifts, noise, kinds, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corrscan.errors import InputError
from corrscan.synthetic.beads import simulate_beads, simulate_focus_sweep


def test_shape_dtype_truth_and_centre_convention() -> None:
    xyz = np.array([[0.0, 0.0, 1500.0], [230.0, -120.0, -800.0]])
    stack, truth = simulate_beads(xyz, size_px=48, nm_per_px=100.0)
    assert stack.shape == (2, 48, 48) and stack.dtype == np.float64
    np.testing.assert_allclose(truth["x_px"], [24.0, 26.3])
    np.testing.assert_allclose(truth["y_px"], [24.0, 22.8])
    np.testing.assert_allclose(truth["z_nm"], [1500.0, -800.0])
    # a bead on pixel N//2 is mirror-symmetric about that pixel along both axes
    img = stack[0]
    c = 24
    np.testing.assert_allclose(img[c, c - 20 : c], img[c, c + 20 : c : -1], atol=1e-12)
    np.testing.assert_allclose(img[c - 20 : c, c], img[c + 20 : c : -1, c], atol=1e-12)
    assert 0.0 <= stack.min() and stack.max() <= 1.0


def test_subpixel_shift_is_exact_fourier_shift() -> None:
    """+d and -d offsets give mirror images about the centre pixel, and an integer offset a
    shifted image, up to each image's affine background normalisation (corner-based)."""

    def affine_residual(a: np.ndarray, b: np.ndarray) -> float:
        design = np.c_[b.ravel(), np.ones(b.size)]
        coef, *_ = np.linalg.lstsq(design, a.ravel(), rcond=None)
        return float(np.abs(design @ coef - a.ravel()).max() / np.ptp(a))

    d = 37.0
    xyz = np.array([[d, 0.0, 900.0], [-d, 0.0, 900.0], [100.0, 0, 900.0], [0.0, 0, 900.0]])
    stack, _ = simulate_beads(xyz, clip=False)
    c = 32
    a, b = stack[0][8:56, c - 24 : c + 25], stack[1][8:56, c + 24 : c - 25 : -1]
    assert affine_residual(a, b) < 1e-3
    assert affine_residual(stack[2][8:56, 9:56], stack[3][8:56, 8:55]) < 1e-3
    # and a half-pixel offset is not the same image
    assert affine_residual(stack[0][8:56, 8:56], stack[3][8:56, 8:56]) > 1e-2


def test_focus_sign_matters() -> None:
    stack, _ = simulate_beads(np.array([[0, 0, 2000.0], [0, 0, -2000.0]]))
    assert np.abs(stack[0] - stack[1]).max() > 0.05


def test_shot_noise_counts_and_reproducibility() -> None:
    xyz = np.zeros((20, 3))
    clean, _ = simulate_beads(xyz, clip=True)
    noisy, _ = simulate_beads(xyz, photons=400.0, seed=3)
    again, _ = simulate_beads(xyz, photons=400.0, seed=3)
    other, _ = simulate_beads(xyz, photons=400.0, seed=4)
    np.testing.assert_array_equal(noisy, again)
    assert not np.array_equal(noisy, other)
    # Poisson: mean preserved, variance = I / photons
    resid = noisy - clean
    assert abs(resid.mean()) < 3 * np.sqrt(clean.mean() / 400.0 / resid.size)
    np.testing.assert_allclose(resid.var(), (clean / 400.0).mean(), rtol=0.05)
    counts, _ = simulate_beads(xyz[:3], photons=1000.0, as_counts=True, seed=1)
    assert counts.dtype == np.uint16 and counts.max() > 300


def test_torch_in_torch_out_and_input_unchanged() -> None:
    xyz = torch.tensor([[10.0, -20.0, 500.0]], dtype=torch.float64)
    before = xyz.clone()
    stack, truth = simulate_beads(xyz, size_px=32)
    assert isinstance(stack, torch.Tensor) and stack.shape == (1, 32, 32)
    assert torch.equal(xyz, before)
    np.testing.assert_allclose(truth["x_px"], [16.1])


def test_focus_sweep_truth() -> None:
    z = np.array([-500.0, 0.0, 500.0])
    stack, truth = simulate_focus_sweep(z, frames_per_plane=2, xy_jitter_px=0.3, size_px=32)
    assert stack.shape == (6, 32, 32)
    np.testing.assert_allclose(truth["z_stage_nm"], np.repeat(z, 2))
    assert np.std(truth["x_px"]) > 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"xyz_nm": np.zeros((3, 2))},
        {"xyz_nm": np.full((1, 3), np.nan)},
        {"xyz_nm": np.zeros((1, 3)), "read_noise": 1.0},
    ],
)
def test_bad_inputs_raise(kwargs: dict) -> None:
    with pytest.raises(InputError):
        simulate_beads(**kwargs)


def test_index_matched_bead_is_invisible_at_any_focus() -> None:
    """Known answer: with n_sphere = n_medium and no absorption the transmission is 1
    everywhere, so every image is the flat background level (float64, any z and offset)."""
    xyz = np.array([[0.0, 0.0, 0.0], [37.0, -81.0, 2500.0], [-120.0, 55.0, -4000.0]])
    stack, _ = simulate_beads(xyz, n_sphere=1.33, n_medium=1.33, background_level=0.4)
    np.testing.assert_allclose(stack, 0.4, rtol=0, atol=1e-12)
    # a pure absorber in focus: the disc centre transmits exp(-2 a R) in amplitude (intensity
    # ~0.4 * 0.0025, blurred by the pupil), pixels far from it stay at the background
    dark, _ = simulate_beads(
        np.zeros((1, 3)), n_sphere=1.33, n_medium=1.33, absorption_per_nm=1e-3, clip=False
    )
    assert dark[0, 32, 32] < 0.4 * np.exp(-1e-3 * 3000.0) + 0.05
    assert abs(dark[0, 2:6, -6:-2].mean() - 0.4) < 0.02  # top-right, away from the bead
