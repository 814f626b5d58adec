"""atoms_to_volume: float64 brute-force reference, conservation, centroid, rotation, centring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from scipy.special import erf

from corrscan.core.atoms import ATOMIC_NUMBERS, atoms_to_volume, element_weights
from corrscan.core.projection import rotate_volume
from corrscan.errors import InputError


def _brute_force(xyz, w, px, shape, sig_ang):
    """Untruncated voxel integrals, every atom x every voxel, float64 (Å origin at voxel 0)."""
    out = np.zeros(shape)
    grids = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    for (x, y, z), wi, si in zip(xyz, w, sig_ang, strict=True):  # tiny case: a few atoms
        s = si / px * math.sqrt(2.0)
        term = wi * np.ones(shape)
        for g, p in zip(grids, (z / px, y / px, x / px), strict=True):
            term *= 0.5 * (erf((g + 0.5 - p) / s) - erf((g - 0.5 - p) / s))
        out += term
    return out


def test_matches_brute_force_reference_in_float64():
    rng = np.random.default_rng(5)
    px, shape = 1.3, (9, 10, 11)
    xyz = rng.uniform(2.5, 9.0, size=(6, 3))
    w = rng.uniform(0.5, 3.0, size=6)
    b = rng.uniform(20.0, 150.0, size=6)  # sigma 0.5 .. 1.4 Å
    ref = _brute_force(xyz, w, px, shape, np.sqrt(b / (8 * np.pi**2)))
    # a wide support: truncation far below rounding
    v = atoms_to_volume(xyz, w, px, shape, b_factor=b, cutoff=9.0, dtype=torch.float64)
    np.testing.assert_allclose(v, ref, rtol=0, atol=1e-12 * ref.max())
    # default 4-sigma support with renormalised profiles: within 1e-3 of the peak
    v4 = atoms_to_volume(xyz, w, px, shape, b_factor=b, dtype=torch.float64)
    assert np.abs(v4 - ref).max() < 1e-3 * ref.max()
    # small chunks (one atom each) give the same map
    v1 = atoms_to_volume(xyz, w, px, shape, b_factor=b, cutoff=9.0, dtype=torch.float64,
                         chunk_elements=1)  # fmt: skip
    np.testing.assert_allclose(v1, v, rtol=0, atol=1e-14 * ref.max())


def test_integral_equals_sum_of_atomic_numbers():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(8.0, 24.0, size=(200, 3))  # well inside a 32 Å box
    elements = rng.choice(["C", "N", "O", "S", "H", "Fe"], size=200)
    v = atoms_to_volume(xyz, elements, 1.0, 32, b_factor=40.0, dtype=torch.float64)
    z = np.array([ATOMIC_NUMBERS[e.upper()] for e in elements], dtype=np.float64)
    assert v.sum() == pytest.approx(z.sum(), rel=1e-12)
    # float32 result, torch in -> torch out
    t = atoms_to_volume(torch.as_tensor(xyz), elements, 1.0, 32, b_factor=40.0)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert float(t.double().sum()) == pytest.approx(z.sum(), rel=1e-5)
    # an atom half outside the box keeps only its inside half
    half = atoms_to_volume(
        [[7.0, 7.0, 0.0]], [2.0], 1.0, 15, b_factor=80.0, cutoff=9.0, dtype=torch.float64
    )
    # z = 0 is the centre of voxel 0: the half below -0.5 is lost
    s = 80.0 / (8 * np.pi**2)
    assert half.sum() == pytest.approx(2.0 * 0.5 * (1 + erf(0.5 / math.sqrt(2 * s))), rel=1e-9)


@pytest.mark.parametrize("pos_zyx", [(6.0, 5.0, 7.0), (6.3, 5.75, 7.1)])
def test_single_atom_centroid_at_planted_position(pos_zyx):
    xyz = np.array([pos_zyx[::-1]]) * 2.0  # x, y, z Å at 2 Å/voxel
    v = atoms_to_volume(xyz, ["C"], 2.0, (13, 12, 14), b_factor=8 * np.pi**2 * 2.0**2,
                        dtype=torch.float64)  # fmt: skip  # sigma = 1 voxel
    grids = np.meshgrid(*(np.arange(n) for n in v.shape), indexing="ij")
    centroid = [float((g * v).sum() / v.sum()) for g in grids]
    np.testing.assert_allclose(centroid, pos_zyx, atol=1e-6)
    if pos_zyx == (6.0, 5.0, 7.0):
        assert np.unravel_index(v.argmax(), v.shape) == (6, 5, 7)
        assert v.sum() == pytest.approx(6.0, rel=1e-12)


def test_point_atoms_fall_into_their_voxel():
    xyz = np.array([[1.2, 3.4, 2.6], [4.4, 0.6, 1.1]])  # x, y, z; voxel 1 Å
    v = atoms_to_volume(xyz, [1.0, 2.0], 1.0, 6, b_factor=0.0, dtype=torch.float64)
    expect = np.zeros((6, 6, 6))
    expect[3, 3, 1], expect[1, 1, 4] = 1.0, 2.0
    np.testing.assert_allclose(v, expect, atol=1e-12)


def test_rotating_atoms_equals_rotating_the_map():
    rng = np.random.default_rng(3)
    xyz = np.clip(rng.normal(size=(25, 3)) * 2.5, -6.0, 6.0)  # Å about the origin, in the box
    shape, px = (24, 24, 24), 1.0
    kw = dict(center=(0.0, 0.0, 0.0), b_factor=8 * np.pi**2 * 1.5**2, dtype=torch.float64)
    vol = atoms_to_volume(xyz, None, px, shape, **kw)
    r = Rotation.from_euler("ZYZ", [40.0, 65.0, -20.0], degrees=True).as_matrix()
    # V_R(r) = V(R r): the map of the atoms moved to R^T a
    expect = atoms_to_volume(xyz @ r, None, px, shape, **kw)
    got = rotate_volume(vol, r[None], order=3)[0]
    err = np.abs(got - expect).max() / expect.max()
    assert err < 0.01, err
    # the wrong direction (R a) is far off: the test can fail
    wrong = atoms_to_volume(xyz @ r.T, None, px, shape, **kw)
    assert np.abs(got - wrong).max() / expect.max() > 0.2


def test_centering_modes():
    xyz = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])  # x, y, z Å: C at x = 0, O at x = 10
    kw = dict(b_factor=8 * np.pi**2, dtype=torch.float64)  # sigma 1 Å = 1 voxel
    grids = np.meshgrid(*(np.arange(24) for _ in range(3)), indexing="ij")

    def centroid(v):
        return np.array([(g * v).sum() / v.sum() for g in grids])

    # mass: the Z-weighted centroid (C = 6, O = 8) at voxel 12 = 24 // 2
    v = atoms_to_volume(xyz, ["C", "O"], 1.0, 24, center="mass", **kw)
    np.testing.assert_allclose(centroid(v), [12.0, 12.0, 12.0], atol=1e-6)
    line = v[12, 12]
    c_atom = (np.arange(24) * line)[:12].sum() / line[:12].sum()  # the C atom's own centroid
    assert c_atom == pytest.approx(12.0 - 10.0 * 8 / 14, abs=1e-5)
    # mean: the plain centroid (x = 5 Å) at voxel 12: C at 7, O at 17
    v = atoms_to_volume(xyz, ["C", "O"], 1.0, 24, center="mean", **kw)
    assert v[12, 12, 17] == pytest.approx(v[12, 12, 7] * 8 / 6, rel=1e-12)
    assert v[12, 12, 17] == v.max()
    # a point: (10, 0, 0) Å -> voxel 12, so O at 12 and C at 2
    v = atoms_to_volume(xyz, None, 1.0, 24, center=(10.0, 0.0, 0.0), **kw)
    assert v[12, 12, 12] == v.max() and v[12, 12, 2] == pytest.approx(v[12, 12, 12])
    # None: Å origin at voxel 0; at 2 Å/voxel the O atom is at x = 5 voxels
    v = atoms_to_volume(xyz, None, 2.0, 24, **kw)
    assert v[0, 0, 5] == pytest.approx(v[0, 0, 0], rel=1e-12) and v[0, 0, 5] == v.max()


def test_element_weights_and_errors():
    np.testing.assert_array_equal(element_weights(["c", "Fe", "D", " O "]), [6, 26, 1, 8])
    with pytest.raises(InputError, match="unknown element"):
        element_weights(["C", "Xx"])
    with pytest.raises(InputError, match="weights"):
        atoms_to_volume(np.zeros((3, 3)), [1.0, 2.0], 1.0, 8)
    with pytest.raises(InputError, match=r"\(n_atoms, 3\)"):
        atoms_to_volume(np.zeros((3, 2)), None, 1.0, 8)
    with pytest.raises(InputError, match="b_factor"):
        atoms_to_volume(np.zeros((1, 3)), None, 1.0, 8, b_factor=-1.0)
    with pytest.raises(InputError, match="pixel_size"):
        atoms_to_volume(np.zeros((1, 3)), None, 0.0, 8)
    with pytest.raises(InputError, match="center"):
        atoms_to_volume(np.zeros((1, 3)), None, 1.0, 8, center="middle")
    with pytest.raises(InputError, match="NaN"):
        atoms_to_volume(np.full((1, 3), np.nan), None, 1.0, 8)
