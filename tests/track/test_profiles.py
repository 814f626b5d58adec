"""Radial profiles at sub-pixel centres against analytic radial functions."""

from __future__ import annotations

import numpy as np
import torch

from corrscan.track import fft_profile, radial_profile


def _radial_image(n: int, h: int, w: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    rows, cols = np.indices((h, w))
    r = np.sqrt((cols[None] - x[:, None, None]) ** 2 + (rows[None] - y[:, None, None]) ** 2)
    return np.exp(-((r / 9.0) ** 2)) + 0.3 * np.exp(-(((r - 14.0) / 4.0) ** 2))


def _f(r: np.ndarray) -> np.ndarray:
    return np.exp(-((r / 9.0) ** 2)) + 0.3 * np.exp(-(((r - 14.0) / 4.0) ** 2))


def test_profile_equals_radial_function_at_subpixel_centres(rng: np.random.Generator) -> None:
    """Smooth radial image centred anywhere (sub-pixel): profile = f(b / oversample) to 7e-3
    (bilinear interpolation error of this f, peak curvature ~0.025/px^2), oversample 1 and 2."""
    n = 12
    x = 31.0 + rng.uniform(-2, 2, n)
    y = 30.0 + rng.uniform(-2, 2, n)
    img = _radial_image(n, 60, 64, x, y)
    for os_ in (1, 2):
        prof = radial_profile(img, x, y, oversample=os_, n_bins=26 * os_)
        ref = _f(np.arange(26 * os_) / os_)
        assert prof.shape == (n, 26 * os_)
        np.testing.assert_allclose(prof, np.broadcast_to(ref, prof.shape), atol=7e-3)


def test_profile_is_continuous_across_pixel_boundaries() -> None:
    """Moving the centre by 0.02 px across a pixel edge changes the profile by < 1e-2 of its
    range (a nearest-bin histogram jumps by whole pixels there)."""
    x = np.array([31.49, 31.51])
    y = np.array([32.0, 32.0])
    img = _radial_image(1, 64, 64, np.array([31.5]), np.array([32.0]))[0]
    prof = radial_profile(np.stack([img, img]), x, y)
    assert np.abs(prof[0] - prof[1]).max() < 1e-2 * np.ptp(prof[0])


def test_edge_bins_use_available_arc_and_empty_bins_are_nan() -> None:
    """Bead 6 px from the border: partial circles average the arc inside the image (direct
    sub-pixel sampling here: the Fourier shift wraps the border and adds ~1 % there)."""
    x = np.array([6.3])
    y = np.array([32.0])
    img = _radial_image(1, 64, 64, x, y)
    prof, counts = radial_profile(img, x, y, n_bins=40, return_counts=True, fourier_shift=False)
    full = 2 * np.pi * np.arange(40)
    inside = counts[0] > 0
    assert np.all(counts[0, 10:30] < full[10:30])  # partial circles near the edge
    np.testing.assert_allclose(prof[0, inside][:32], _f(np.arange(40))[inside][:32], atol=7e-3)
    # radius 39 circle around (6.3, 32) still touches the image; none empty here
    prof_nan = radial_profile(img, np.array([np.nan]), y)
    assert np.isnan(prof_nan).all()


def test_torch_and_integer_input_and_unchanged() -> None:
    x = np.array([20.2])
    y = np.array([19.7])
    img = (_radial_image(1, 40, 40, x, y) * 1000).astype(np.uint16)
    before = img.copy()
    p_np = radial_profile(img, x, y)
    np.testing.assert_array_equal(img, before)
    t = torch.from_numpy(img.astype(np.float32))
    p_t = radial_profile(t, torch.tensor(x), torch.tensor(y))
    assert isinstance(p_t, torch.Tensor)
    np.testing.assert_allclose(p_t.numpy(), p_np, rtol=1e-5)


def test_fft_profile_is_translation_invariant(rng: np.random.Generator) -> None:
    img = rng.random((3, 32, 32))
    rolled = np.roll(img, (5, -7), axis=(1, 2))
    np.testing.assert_allclose(fft_profile(img), fft_profile(rolled), rtol=1e-10)
    assert fft_profile(img, n_bins=10).shape == (3, 10)
