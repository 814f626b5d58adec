"""Tests for corrscan.core.projection: Fourier-slice projections and real-space rotations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from corrscan.core.projection import (
    bspline_prefilter,
    prepare_volume_rfft,
    project,
    project_fourier,
    project_real_space_reference,
    rotate_volume,
    sample_volume,
)
from corrscan.core.rotations import euler_to_matrix
from corrscan.errors import InputError
from corrscan.synthetic.density import project_gaussians, pseudo_atom_map


def _corr(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def atom_map():
    vol, truth = pseudo_atom_map(32, n_atoms=150, sigma=1.5, seed=11)
    return vol, truth


@pytest.fixture(scope="module")
def poses():
    r = Rotation.random(4, random_state=21)
    return r.as_matrix(), r.as_euler("ZYZ", degrees=True)


# ---------------------------------------------------------------- Fourier-slice projection


def test_project_matches_float64_line_integrals(atom_map, poses):
    vol, truth = atom_map
    mats, _ = poses
    fourier = project(vol, mats.astype(np.float32))
    ref = project_real_space_reference(vol, mats)
    exact = project_gaussians(
        truth["positions"],
        mats,
        (32, 32),
        sigma=truth["sigma_px"],
        amplitudes=truth["amplitudes"],
    ).numpy()
    assert fourier.shape == (4, 32, 32) and fourier.dtype == np.float32
    for f, r, e in zip(fourier, ref, exact, strict=True):
        assert _corr(f, r) > 0.98
        assert _corr(f, e) > 0.99
        assert _corr(r, e) > 0.99
        # same scale (line sums in voxel units), not just correlated
        assert np.abs(f - e).max() < 0.05 * e.max()


def test_leopard_setting_pad1_no_gridding(atom_map, poses):
    vol, truth = atom_map
    mats, _ = poses
    p1 = project(vol, mats, pad=1.0, gridding_correction=False)
    exact = project_gaussians(
        truth["positions"],
        mats,
        (32, 32),
        sigma=truth["sigma_px"],
        amplitudes=truth["amplitudes"],
    ).numpy()
    for a, e in zip(p1, exact, strict=True):
        assert _corr(a, e) > 0.98


def test_projection_identity_is_sum_over_z(atom_map):
    vol, _ = atom_map
    v64 = torch.as_tensor(vol, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    # on-lattice slice: exact without the gridding correction, for any padding
    for pad in (1.0, 2.0, 3.0):
        p = project(v64, eye, pad=pad, gridding_correction=False)
        np.testing.assert_allclose(p.numpy(), v64.sum(0).numpy(), rtol=0, atol=1e-9 * vol.sum())
    # the sinc^2 correction over-weights lattice samples (documented): a few per cent here
    p = project(v64, eye).numpy()
    err = np.abs(p - vol.sum(0)).max() / vol.sum(0).max()
    assert 1e-3 < err < 0.12


def test_projection_direction_convention():
    # a single off-centre atom at map (z, y, x) = c + (0, 0, 5) i.e. x = +5:
    # R = Rz(90): P(y, x) = sum_z V(R (x, y, z)) = V(-y, x, z) -> peak where -y = 5, x = 0
    vol, _ = np.zeros((21, 21, 21), np.float32), None
    zz, yy, xx = np.meshgrid(*[np.arange(21)] * 3, indexing="ij")
    vol = np.exp(-((zz - 10) ** 2 + (yy - 10) ** 2 + (xx - 15) ** 2) / 2.0).astype(np.float32)
    p = project(vol, euler_to_matrix(np.array([90.0, 0.0, 0.0], np.float32)))
    assert np.unravel_index(np.argmax(p), p.shape) == (10 - 5, 10)
    # theta = 90 about y: the projection direction is +x: the atom lands on the centre
    p = project(vol, euler_to_matrix(np.array([0.0, 90.0, 0.0], np.float32)))
    assert np.unravel_index(np.argmax(p), p.shape) == (10, 10)


def test_project_fourier_layout(atom_map, poses):
    vol, _ = atom_map
    mats, _ = poses
    prepared = prepare_volume_rfft(torch.as_tensor(vol), pad=2.0)
    sl = project_fourier(prepared, torch.as_tensor(mats))
    assert sl.shape == (4, 32, 17) and sl.is_complex()
    img = project(prepared, torch.as_tensor(mats))
    torch.testing.assert_close(
        torch.fft.fftshift(torch.fft.irfft2(sl, s=(32, 32)), dim=(-2, -1)), img
    )
    # DC = sum of the projection = sum of the map (exact without gridding correction)
    sl0 = project_fourier(prepare_volume_rfft(vol, gridding_correction=False), mats)
    np.testing.assert_allclose(sl0[:, 0, 0].real, vol.sum(), rtol=1e-5)
    # the torch-fourier-slice backend gives the same slices
    tfs = project_fourier(prepared, torch.as_tensor(mats), method="torch-fourier-slice")
    img_tfs = torch.fft.fftshift(torch.fft.irfft2(tfs, s=(32, 32)), dim=(-2, -1))
    for a, b in zip(img_tfs, img, strict=True):
        assert _corr(a, b) > 0.995
    # pad = 1: the slice is returned without extra FFTs and still has the same meaning
    sl1 = project_fourier(prepare_volume_rfft(vol, pad=1.0, gridding_correction=False), mats)
    assert isinstance(sl1, np.ndarray) and sl1.shape == (4, 32, 17)
    np.testing.assert_allclose(sl1[:, 0, 0].real, vol.sum(), rtol=1e-5)
    tfs1 = project_fourier(
        prepare_volume_rfft(vol, pad=1.0, gridding_correction=False),
        mats,
        method="torch-fourier-slice",
    )
    np.testing.assert_allclose(tfs1, sl1, atol=1e-3 * np.abs(sl1).max())


def test_project_output_shape_and_batch(poses):
    vol, truth = pseudo_atom_map(32, n_atoms=100, sigma=1.5, seed=5, radius=7.0)
    mats, _ = poses
    small = project(vol, mats.reshape(2, 2, 3, 3), output_shape=(24, 26), batch_size=1)
    assert small.shape == (2, 2, 24, 26)
    exact = project_gaussians(
        truth["positions"],
        mats,
        (24, 26),
        sigma=truth["sigma_px"],
        amplitudes=truth["amplitudes"],
        volume_shape=(32, 32, 32),
    ).numpy()
    for a, e in zip(small.reshape(4, 24, 26), exact, strict=True):
        assert _corr(a, e) > 0.99
        assert np.abs(a - e).max() < 0.06 * e.max()


def test_projection_errors():
    with pytest.raises(InputError, match="cubic"):
        prepare_volume_rfft(np.zeros((8, 8, 9), np.float32))
    with pytest.raises(InputError, match="pad"):
        prepare_volume_rfft(np.zeros((8, 8, 8), np.float32), pad=0.5)
    with pytest.raises(InputError, match="rotation_matrices"):
        project(np.zeros((8, 8, 8), np.float32), np.zeros((2, 3)))
    with pytest.raises(InputError, match="method"):
        project_fourier(prepare_volume_rfft(np.zeros((8, 8, 8))), np.eye(3), method="gridding")
    with pytest.raises(InputError, match=r"\(\.\.\., D, H, W\)"):
        rotate_volume(np.zeros((5, 5)), np.eye(3))
    with pytest.raises(InputError, match="rotation_matrices"):
        rotate_volume(np.zeros((5, 5, 5)), np.eye(4))
    with pytest.raises(InputError, match="order"):
        rotate_volume(np.zeros((5, 5, 5)), np.eye(3), order=2)


# ---------------------------------------------------------------- real-space rotation


@pytest.mark.parametrize("order", [0, 1, 3])
def test_rotate_volume_rot90(order, rng):
    v = rng.normal(size=(9, 9, 9))
    eye = np.eye(3)
    cases = {
        # R = Rz(90): out(x, y, z) = V(-y, x, z)
        (90.0, 0.0, 0.0): np.rot90(v, 1, axes=(1, 2)),
        # R = Ry(90): out(x, y, z) = V(z, y, -x)
        (0.0, 90.0, 0.0): np.rot90(v, 1, axes=(2, 0)),
        (180.0, 0.0, 0.0): np.rot90(v, 2, axes=(1, 2)),
    }
    for ang, expected in cases.items():
        out = rotate_volume(v, euler_to_matrix(np.array(ang)), order=order)
        np.testing.assert_allclose(out, expected, atol=1e-9)
    # R = Rx(90) = Rz(-90) Ry(90) Rz(90): out(x, y, z) = V(x, -z, y)
    rx = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    np.testing.assert_allclose(
        rotate_volume(v, rx, order=order), np.rot90(v, 1, axes=(0, 1)), atol=1e-9
    )
    np.testing.assert_allclose(rotate_volume(v, eye, order=order), v, atol=1e-9)


def test_rotate_volume_even_size_centre(rng):
    # even size: the centre is N // 2, so rot90 about it = np.rot90 shifted by one voxel
    v = rng.normal(size=(8, 8, 8))
    out = rotate_volume(v, euler_to_matrix(np.array([90.0, 0.0, 0.0])))
    exp = np.roll(np.rot90(v, 1, axes=(1, 2)), 1, axis=1)
    np.testing.assert_allclose(out[:, 1:, :], exp[:, 1:, :], atol=1e-12)


def test_rotate_volume_batched_channels_and_kinds(rng):
    v = rng.normal(size=(2, 9, 9, 9)).astype(np.float32)
    mats = Rotation.random(3, random_state=1).as_matrix().astype(np.float32)
    out = rotate_volume(torch.as_tensor(v), torch.as_tensor(mats))
    assert isinstance(out, torch.Tensor) and out.shape == (3, 2, 9, 9, 9)
    chunked = rotate_volume(torch.as_tensor(v), torch.as_tensor(mats), order=3, batch_size=2)
    torch.testing.assert_close(
        chunked, rotate_volume(torch.as_tensor(v), torch.as_tensor(mats), order=3)
    )
    one = rotate_volume(v[1], mats[2])
    assert isinstance(one, np.ndarray) and one.shape == (9, 9, 9)
    np.testing.assert_allclose(out[2, 1].numpy(), one, atol=1e-5)


@pytest.mark.parametrize("order", [1, 3])
def test_rotations_compose(order, atom_map):
    vol, _ = atom_map
    r1, r2 = Rotation.random(2, random_state=7).as_matrix()
    two_steps = rotate_volume(rotate_volume(vol, r1, order=order), r2, order=order)
    direct = rotate_volume(vol, r1 @ r2, order=order)
    sl = slice(6, 26)
    assert _corr(two_steps[sl, sl, sl], direct[sl, sl, sl]) > (0.995 if order == 3 else 0.98)
    # and the inverse undoes it
    back = rotate_volume(rotate_volume(vol, r1, order=order), r1.T, order=order)
    assert _corr(back[sl, sl, sl], vol[sl, sl, sl]) > (0.995 if order == 3 else 0.98)


def test_rotate_volume_cubic_matches_scipy(rng):
    v = rng.normal(size=(11, 11, 11))
    r = euler_to_matrix(np.array([30.0, 40.0, 50.0]))
    ours = rotate_volume(v, r, order=3)
    # scipy: out[o] = in[M o + offset] in (z, y, x) index order
    m = r[::-1, ::-1]
    c = np.full(3, 5.0)
    ref = ndimage.affine_transform(v, m, offset=c - m @ c, order=3, mode="mirror")
    inner = slice(3, 8)
    np.testing.assert_allclose(ours[inner, inner, inner], ref[inner, inner, inner], atol=1e-9)


@pytest.mark.parametrize("shape", [(11, 11, 11), (8, 10, 9)])
def test_rotate_volume_cubic_cpu_path_equals_grid_sample_form(rng, shape):
    """The CPU (SciPy) order-3 path gives the 8-fetch grid_sample values, edges included."""
    v = torch.as_tensor(rng.normal(size=(2, *shape)))
    mats = torch.as_tensor(Rotation.random(4, random_state=3).as_matrix())
    centre = (4.0, 5.5, 3.0)
    for c in (None, centre):
        ours = rotate_volume(v, mats, order=3, center=c)
        # reference: sample_volume (grid_sample form) at R @ (r - c) + c
        cz, cy, cx = (s // 2 for s in shape) if c is None else c
        cxyz = torch.tensor([cx, cy, cz], dtype=torch.float64)
        zz, yy, xx = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in shape),
                                    indexing="ij")  # fmt: skip
        rel = torch.stack([xx, yy, zz], -1) - cxyz
        src = torch.einsum("nij,dhwj->ndhwi", mats, rel) + cxyz
        ref = sample_volume(v, src, order=3)  # (n, C, D, H, W)
        assert ref.abs().amax() > 0.1 and (ref == 0).any()  # edges cut: the mask is tested
        torch.testing.assert_close(ours, ref, atol=1e-9, rtol=0)
    f32 = rotate_volume(v.float(), mats, order=3)
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32, rotate_volume(v, mats, order=3).float(), atol=1e-4, rtol=0)


def test_bspline_prefilter_matches_scipy(rng):
    v = rng.normal(size=(7, 8, 9))
    np.testing.assert_allclose(
        bspline_prefilter(torch.as_tensor(v)).numpy(),
        ndimage.spline_filter(v, order=3, mode="mirror"),
        atol=1e-10,
    )


def test_rotate_then_sum_equals_projection(atom_map, poses):
    vol, _ = atom_map
    mats, _ = poses
    summed = rotate_volume(vol, mats.astype(np.float32)).sum(1)
    proj = project(vol, mats.astype(np.float32))
    for a, b in zip(summed, proj, strict=True):
        assert _corr(a, b) > 0.99


def test_sample_volume_at_grid_points(rng):
    v = torch.as_tensor(rng.normal(size=(1, 6, 7, 8)))
    z, y, x = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), torch.arange(8.0), indexing="ij")
    idx = torch.stack([x, y, z], -1)[None].to(torch.float64)
    for order in (0, 1, 3):
        torch.testing.assert_close(sample_volume(v, idx, order=order)[0], v, atol=1e-9, rtol=0)
    with pytest.raises(InputError):
        sample_volume(v, idx, order=2)


def test_rotate_volume_centre_argument(rng):
    v = rng.normal(size=(9, 9, 9))
    # rotating about voxel (4, 4, 4) explicitly = default
    r = euler_to_matrix(np.array([90.0, 0.0, 0.0]))
    np.testing.assert_allclose(rotate_volume(v, r, center=(4, 4, 4)), rotate_volume(v, r))
    # about a corner: the corner voxel stays
    out = rotate_volume(v, r, center=(0, 0, 0), order=1)
    assert out[3, 0, 0] == pytest.approx(v[3, 0, 0])
    # an asymmetric centre (z, y, x) = (1, 3, 6): the axis line (z, 3, 6) is fixed and, for
    # R = Rz(90), out(x, y, z) = V(c + Rz(90) (r - c)) = V(cx - (y - cy), cy + (x - cx), z)
    out = rotate_volume(v, r, center=(1, 3, 6), order=1)
    np.testing.assert_allclose(out[:, 3, 6], v[:, 3, 6], atol=1e-12)
    for y, x in ((2, 6), (4, 5), (5, 7)):  # source (y', x') = (3 + x - 6, 6 - (y - 3))
        np.testing.assert_allclose(out[:, y, x], v[:, 3 + x - 6, 6 - (y - 3)], atol=1e-12)
