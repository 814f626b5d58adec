"""Tests for corrscan.synthetic.density: seeded pseudo-atom maps with planted truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from corrscan.errors import InputError
from corrscan.synthetic.density import (
    project_gaussians,
    pseudo_atom_map,
    pseudo_atom_positions,
    render_gaussians,
)


def test_seeded_reproducibility():
    a, ta = pseudo_atom_map(24, n_atoms=50, seed=3)
    b, tb = pseudo_atom_map(24, n_atoms=50, seed=3)
    c, _ = pseudo_atom_map(24, n_atoms=50, seed=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ta["positions"], tb["positions"])
    assert not np.allclose(a, c)
    assert a.dtype == np.float32 and a.shape == (24, 24, 24)


@pytest.mark.parametrize("mode", ["chain", "uniform"])
def test_atoms_inside_ball_and_box(mode):
    vol, truth = pseudo_atom_map((30, 32, 34), n_atoms=120, sigma=2.0, pixel_size=1.25, mode=mode)
    r = np.linalg.norm(truth["positions"] - truth["center"], axis=1)
    limit = min(30, 32, 34) / 2 - 3 * truth["sigma_px"] - 1
    assert r.max() <= limit + 1e-9
    np.testing.assert_array_equal(truth["center"], [15, 16, 17])
    np.testing.assert_allclose(truth["positions_angstrom"], truth["positions"] * 1.25)
    assert truth["sigma_px"] == pytest.approx(1.6)
    # the density vanishes at the box faces
    faces = np.concatenate(
        [vol[0].ravel(), vol[-1].ravel(), vol[:, 0].ravel(), vol[:, :, -1].ravel()]
    )
    assert faces.max() < 0.02 * vol.max()


def test_chain_bond_lengths():
    pos = pseudo_atom_positions(300, radius=12.0, mode="chain", bond_length=3.8, seed=1)
    np.testing.assert_allclose(np.linalg.norm(np.diff(pos, axis=0), axis=1), 3.8)
    assert np.linalg.norm(pos, axis=1).max() <= 12.0 + 1e-9


def test_planted_positions_are_the_density_maxima():
    # well separated atoms: every local maximum of the map is an atom, at the atom's voxel
    vol, truth = pseudo_atom_map(
        48, n_atoms=20, sigma=1.2, mode="uniform", min_distance=10.0, amplitude_range=(1, 1), seed=2
    )
    d = np.linalg.norm(truth["positions"][:, None] - truth["positions"][None], axis=-1)
    assert d[np.triu_indices(20, 1)].min() >= 10.0
    peaks = (vol == ndimage.maximum_filter(vol, size=5)) & (vol > 0.5 * vol.max())
    found = np.argwhere(peaks)
    assert found.shape[0] == 20
    nearest = np.linalg.norm(found[:, None] - truth["positions"][None], axis=-1).min(1)
    assert nearest.max() <= np.sqrt(3) * 0.5 + 1e-9
    # sub-voxel: the intensity-weighted centroid around each atom is the atom position
    for p in truth["positions"]:
        c = np.round(p).astype(int)
        box = vol[c[0] - 4 : c[0] + 5, c[1] - 4 : c[1] + 5, c[2] - 4 : c[2] + 5].astype(np.float64)
        grid = np.stack(np.meshgrid(*[np.arange(-4, 5)] * 3, indexing="ij"), -1) + c
        centroid = (box[..., None] * grid).sum((0, 1, 2)) / box.sum()
        np.testing.assert_allclose(centroid, p, atol=0.01)


def test_render_gaussians_values():
    pos = np.array([[5.0, 6.0, 7.0], [10.3, 4.2, 8.9]])
    vol = render_gaussians(pos, (16, 16, 16), sigma=1.5, amplitudes=[2.0, 1.0], dtype=torch.float64)
    z, y, x = np.meshgrid(*[np.arange(16)] * 3, indexing="ij")
    ref = sum(
        a * np.exp(-((z - p[0]) ** 2 + (y - p[1]) ** 2 + (x - p[2]) ** 2) / (2 * 1.5**2))
        for a, p in zip([2.0, 1.0], pos, strict=True)
    )
    np.testing.assert_allclose(vol.numpy(), ref, atol=1e-12)


def test_analytic_projection_identity_and_quarter_turn():
    vol, truth = pseudo_atom_map(32, n_atoms=60, sigma=1.5, seed=9)
    kw = {"sigma": truth["sigma_px"], "amplitudes": truth["amplitudes"]}
    p0 = project_gaussians(truth["positions"], np.eye(3), (32, 32), **kw).numpy()
    np.testing.assert_allclose(p0, vol.astype(np.float64).sum(0), atol=1e-4 * p0.max())
    # R = Ry(90) (x' = z, z' = -x): P(y, x) = sum_z V(z, y, -x) -> the sum over x, mirrored
    ry = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    p1 = project_gaussians(truth["positions"], ry, (32, 32), **kw).numpy()
    ref = vol.astype(np.float64).sum(2)  # (z, y)
    # P(y, x) = sum_z V(R (x, y, z)) = sum_z V(x=z, y, z=-x): image[y, x] = S[z=-x, y]
    expected = np.roll(ref[::-1, :], 1, axis=0).T
    np.testing.assert_allclose(p1, expected, atol=1e-4 * p1.max())


def test_density_errors():
    with pytest.raises(InputError):
        pseudo_atom_map(8, sigma=3.0)
    with pytest.raises(InputError):
        pseudo_atom_positions(0, radius=5.0)
    with pytest.raises(InputError):
        pseudo_atom_positions(500, radius=3.0, min_distance=3.0, mode="uniform")
    with pytest.raises(InputError):
        render_gaussians(np.zeros((3, 2)), 8, sigma=1.0)
