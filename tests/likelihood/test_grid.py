"""Polar grid quadrature, displacement and viewing grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corrscan.errors import InputError
from corrscan.likelihood.grid import (
    PolarGrid,
    displacement_grid,
    viewing_grid_fibonacci,
    viewing_grid_from_angles,
    viewing_grid_gauss_legendre,
)


@pytest.mark.parametrize("quadrature", ["gauss-jacobi", "gauss-legendre"])
def test_quadrature_integrates_polynomials_times_harmonics_exactly(quadrature):
    g = PolarGrid.create(16, 1.5, resolution_factor=0.8, n_shells=9, quadrature=quadrature)
    r_max = g.radius_max
    kx, ky = g.points()
    r = np.hypot(kx, ky)
    th = np.arctan2(ky, kx)
    # r^a e^{i m θ}: integral over the disc is 2π R^{a+2}/(a+2) for m = 0, else 0.
    for a in range(0, 2 * g.n_shells - 2):
        for m in (0, 1, 5, g.n_inplanes - 1):
            f = torch.from_numpy(r**a * np.exp(1j * m * th))
            got = complex(g.integrate(f))
            want = 2 * np.pi * r_max ** (a + 2) / (a + 2) if m == 0 else 0.0
            assert abs(got - want) <= 1e-11 * (2 * np.pi * r_max ** (a + 2)), (a, m, got, want)


def test_gauss_jacobi_is_the_default_and_not_exact_beyond_its_degree():
    g = PolarGrid.create(8, 1.0, n_shells=3)
    assert g.quadrature == "gauss-jacobi"
    r = np.hypot(*g.points())
    a = 2 * g.n_shells  # degree 2n in r is beyond exactness
    got = float(g.integrate(torch.from_numpy(r**a)))
    want = 2 * np.pi * g.radius_max ** (a + 2) / (a + 2)
    assert abs(got - want) > 1e-8 * want


def test_default_sizes_follow_cryolike():
    g = PolarGrid.create(64, 2.0)
    assert (g.n_shells, g.n_inplanes) == (65, 128)
    assert g.radius_max == pytest.approx(0.5)
    with pytest.raises(InputError):
        PolarGrid.create(64, 2.0, n_inplanes=127)
    with pytest.raises(InputError):
        PolarGrid.create(64, 2.0, quadrature="simpson")


def test_grid_round_trip_and_compatibility():
    g = PolarGrid.create(24, 1.2, resolution_factor=0.5, n_inplanes=40)
    h = PolarGrid.from_dict(g.to_dict())
    assert g.compatible(h)
    assert not g.compatible(PolarGrid.create(24, 1.2))


def test_displacement_grid_layout_and_zero_appended():
    d = displacement_grid(2.0, 3, 2, pixel_size=1.5)
    # x fastest; 3 x 2 grid; y counts even -> (0, 0) appended
    assert d.shape == (7, 2)
    np.testing.assert_allclose(d[:3, 0], [-3.0, 0.0, 3.0])
    np.testing.assert_allclose(d[:3, 1], [-3.0, -3.0, -3.0])
    np.testing.assert_allclose(d[-1], [0.0, 0.0])
    d1 = displacement_grid(5.0, 1, 1)
    np.testing.assert_allclose(d1, [[0.0, 0.0]])


def test_viewing_grids_match_cryolike_counts_and_weights():
    for k, n in [(1, 2370), (2, 690), (4, 239), (8, 96)]:
        v = viewing_grid_gauss_legendre(k / (4 * np.pi))
        assert len(v) == n
        assert v.weights.sum() == pytest.approx(4 * np.pi)
    v = viewing_grid_gauss_legendre(4 / (4 * np.pi))
    # Quadrature of a polynomial on the sphere: <z^2> = 1/3 over the sphere
    z = np.cos(np.deg2rad(v.euler[:, 1]))
    assert (v.weights * z**2).sum() / (4 * np.pi) == pytest.approx(1 / 3, rel=1e-10)
    f = viewing_grid_fibonacci(500)
    zf = np.cos(np.deg2rad(f.euler[:, 1]))
    assert abs(zf.mean()) < 1e-3 and (zf**2).mean() == pytest.approx(1 / 3, abs=2e-3)
    e = viewing_grid_from_angles(np.array([[0.0, 10.0], [20.0, 30.0]]))
    assert e.euler.shape == (2, 3) and np.allclose(e.weights, 0.5)
