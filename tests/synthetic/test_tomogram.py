"""Synthetic tomograms: planted copies are the template rotated about its centre voxel."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from corrscan.errors import InputError
from corrscan.synthetic.tomogram import missing_wedge_mask, random_rotations, simulate_tomogram


def _rotate_ref(vol, r):
    """float64 cubic rotation g(R^T (p - c) + c) with (x, y, z) vectors on (z, y, x) arrays."""
    perm = np.eye(3)[::-1]
    m = perm @ r.T @ perm
    c = np.array([s // 2 for s in vol.shape], dtype=np.float64)
    return ndimage.affine_transform(vol.astype(np.float64), m, offset=c - m @ c, order=3)


def test_copies_are_rotated_templates_at_their_positions():
    tomo, truth = simulate_tomogram(
        40,
        template_shape=13,
        n_particles=3,
        noise_std=0.0,
        wedge=None,
        seed=4,
        n_atoms=12,
        sigma=1.0,
    )
    np.testing.assert_allclose(tomo, truth["clean"], atol=1e-5)
    t = truth["template"]
    assert t.max() == pytest.approx(1.0)
    c = np.array([s // 2 for s in t.shape])
    for p, r in zip(truth["positions"], truth["rotations"], strict=True):
        box = truth["clean"][
            tuple(slice(v - ci, v - ci + s) for v, ci, s in zip(p, c, t.shape, strict=True))
        ]
        ref = _rotate_ref(t, r)
        assert np.corrcoef(box.ravel(), ref.ravel())[0, 1] > 0.999
        # and not another rotation (the template is asymmetric)
        rz90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        assert np.corrcoef(box.ravel(), _rotate_ref(t, r @ rz90).ravel())[0, 1] < 0.99
    # copies are separated and inside
    d = np.linalg.norm(truth["positions"][:, None] - truth["positions"][None], axis=-1)
    assert d[np.triu_indices(3, 1)].min() >= 13


def test_noise_and_wedge():
    tomo, truth = simulate_tomogram(
        32, template_shape=11, n_particles=1, noise_std=1.0, wedge=(-45, 45), seed=1
    )
    w = missing_wedge_mask(tomo.shape, (-45, 45))
    ft = np.fft.rfftn(tomo)
    assert np.abs(ft[w == 0]).max() < 1e-3 * np.abs(ft).max()
    # wedge keeps ~half of the frequencies for +-45 degrees
    assert 0.4 < w.mean() < 0.6
    resid = tomo - np.fft.irfftn(np.fft.rfftn(truth["clean"]) * w, s=tomo.shape, axes=(0, 1, 2))
    assert resid.std() == pytest.approx(np.sqrt(w.mean()), rel=0.15)
    same, _ = simulate_tomogram(
        32, template_shape=11, n_particles=1, noise_std=1.0, wedge=(-45, 45), seed=1
    )
    np.testing.assert_array_equal(tomo, same)


def test_random_rotations_are_rotations(rng):
    r = random_rotations(50, rng)
    np.testing.assert_allclose(
        r @ np.swapaxes(r, 1, 2), np.broadcast_to(np.eye(3), r.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)


def test_errors():
    with pytest.raises(InputError):
        simulate_tomogram(16, template_shape=12, n_particles=5, seed=0)
    with pytest.raises(InputError):
        missing_wedge_mask((8, 8, 8), (30, -30))
