"""Exact image transform, volume NUFFT and templates from maps and atoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corrscan.likelihood.grid import PolarGrid, viewing_grid_fibonacci
from corrscan.likelihood.templates import atoms_to_polar_templates, map_to_polar_templates
from corrscan.likelihood.transform import box_mask_polar, images_to_polar, volume_nufft


def _direct_dft_2d(img: np.ndarray, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    n = img.shape[-1]
    pos = np.arange(n) - n // 2
    ex = np.exp(-2j * np.pi * kx[..., None] * pos)
    ey = np.exp(-2j * np.pi * ky[..., None] * pos)
    return np.einsum("myx,nwx,nwy->mnw", img, ex, ey)


@pytest.mark.parametrize("method", ["direct", "nufft"])
def test_images_to_polar_matches_direct_dft(rng, method):
    g = PolarGrid.create(20, 1.0, resolution_factor=0.9, n_inplanes=24)
    img = rng.standard_normal((3, 20, 20))
    ref = _direct_dft_2d(img, *g.points())
    tol64 = 1e-12 if method == "direct" else 1e-6
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, tol64)):
        got = images_to_polar(torch.from_numpy(img).to(dtype), g, method=method, batch_size=2)
        assert np.abs(got.numpy() - ref).max() / np.abs(ref).max() < tol


def test_box_mask_is_transform_of_ones():
    g = PolarGrid.create(12, 1.0, n_inplanes=16)
    ones = torch.ones(1, 12, 12, dtype=torch.float64)
    s = box_mask_polar(g, dtype=torch.complex128)
    torch.testing.assert_close(images_to_polar(ones, g)[0], s, atol=1e-10, rtol=0)


def test_volume_nufft_matches_direct_sum(rng):
    vol = rng.standard_normal((10, 10, 10))
    pts = rng.uniform(-0.5, 0.5, (40, 3))
    got = volume_nufft(torch.from_numpy(vol), torch.from_numpy(pts)).numpy()
    p = np.arange(10) - 5
    ref = np.einsum(
        "zyx,px,py,pz->p",
        vol,
        np.exp(-2j * np.pi * pts[:, 0, None] * p),
        np.exp(-2j * np.pi * pts[:, 1, None] * p),
        np.exp(-2j * np.pi * pts[:, 2, None] * p),
    )
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-6


def _gaussian_map(atoms: np.ndarray, n: int, ps: float, sigma: float) -> np.ndarray:
    ax = (np.arange(n) - n // 2) * ps
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    vol = np.zeros((n, n, n))
    for a in atoms:
        vol += np.exp(-((x - a[0]) ** 2 + (y - a[1]) ** 2 + (z - a[2]) ** 2) / (2 * sigma**2))
    return vol / (2 * np.pi * sigma**2) ** 1.5  # unit mass per atom, density per Å^3 ...


def test_map_and_atom_templates_agree(rng):
    n, ps, sigma = 24, 2.0, 3.0
    atoms = rng.uniform(-10, 10, (30, 3))
    atoms -= atoms.mean(0)
    g = PolarGrid.create(n, ps)
    v = viewing_grid_fibonacci(12)
    ta = atoms_to_polar_templates(atoms, g, v, sigma=sigma, precision="double")
    vol = _gaussian_map(atoms, n, ps, sigma) * ps**3  # mass per voxel
    tm = map_to_polar_templates(vol, g, v, voxel_size=ps, precision="double")
    assert (ta.data - tm.data).abs().max() < 1e-4
    # normalised (the box mean is kept: it does not commute with in-plane rotations)
    w = torch.as_tensor(g.point_weights)[:, None]
    torch.testing.assert_close(
        (w * ta.data.abs() ** 2).sum((-2, -1)), torch.ones(12, dtype=torch.float64)
    )


def test_atom_template_is_the_transform_of_the_projection(rng):
    # A single atom at a: the template (before normalisation) is a Gaussian times a phase with
    # the atom projected by R = euler_to_matrix(phi, theta, 0): position (R^T a)_xy.
    from corrscan.core.rotations import euler_to_matrix

    g = PolarGrid.create(16, 1.0, n_shells=6, n_inplanes=12)
    a = np.array([[3.0, -2.0, 1.5]])
    eul = np.array([[30.0, 50.0, 0.0]])
    from corrscan.likelihood.grid import viewing_grid_from_angles

    t = atoms_to_polar_templates(
        a, g, viewing_grid_from_angles(eul), sigma=1.0, center=False, precision="double"
    )
    r = euler_to_matrix(torch.from_numpy(eul))[0].numpy()
    b = (r.T @ a[0])[:2]
    kx, ky = g.points()
    raw = np.exp(-2 * np.pi**2 * (kx**2 + ky**2)) * np.exp(-2j * np.pi * (kx * b[0] + ky * b[1]))
    raw /= np.sqrt((g.point_weights[:, None] * np.abs(raw) ** 2).sum())
    np.testing.assert_allclose(t.data[0].numpy(), raw, atol=1e-10)


def test_in_plane_rotation_is_a_cyclic_shift_of_the_template(rng):
    """The template at (phi, theta, psi = 360 w / W) is the psi = 0 template rolled by w
    angles: T_psi(r, θ_j) = T_0(r, θ_j + psi). This is what the kernel's angular FFT assumes;
    removing the (square, image-frame) box mean before rotating broke it by up to 1e-2."""
    from corrscan.likelihood.grid import viewing_grid_from_angles

    n, ps = 24, 2.0
    atoms = rng.uniform(-12, 12, (40, 3))
    g = PolarGrid.create(n, ps)
    base = viewing_grid_fibonacci(4).euler
    ws = np.array([1, 5, 17, 32])
    eul = base.copy()
    eul[:, 2] = 360.0 * ws / g.n_inplanes
    atom_tpl = lambda e: atoms_to_polar_templates(  # noqa: E731
        atoms, g, viewing_grid_from_angles(e), sigma=2.0, precision="double"
    )
    vol = _gaussian_map(atoms, n, ps, 2.0) * ps**3
    map_tpl = lambda e: map_to_polar_templates(  # noqa: E731
        vol, g, viewing_grid_from_angles(e), precision="double"
    )
    for make, tol in ((atom_tpl, 1e-10), (map_tpl, 1e-7)):  # map: NUFFT accuracy
        t0, tpsi = make(base).data, make(eul).data
        for i, w in enumerate(ws):
            rolled = torch.roll(t0[i], shifts=-int(w), dims=-1)  # rolled[j] = T_0[j + w]
            torch.testing.assert_close(tpsi[i], rolled, atol=tol, rtol=0)
