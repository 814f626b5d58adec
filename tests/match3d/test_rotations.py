"""Rotation sets: covering radius, symmetry reduction, cones, Euler/RELION conventions."""

from __future__ import annotations

import numpy as np
import pytest

from corrscan.core import rotations as core_rot
from corrscan.errors import InputError
from corrscan.match3d.rotations import (
    euler_to_matrix,
    matrices_to_relion_euler,
    matrix_to_euler,
    n_rotations_for_step,
    relion_euler_to_matrices,
    rotation_angle_deg,
    rotation_set,
    super_fibonacci_rotations,
    symmetry_matrices,
)
from corrscan.synthetic.tomogram import random_rotations


def test_euler_convention_matches_core(rng):
    ang = np.column_stack(
        [rng.uniform(-180, 180, 50), rng.uniform(0, 180, 50), rng.uniform(-180, 180, 50)]
    )
    mine = euler_to_matrix(ang)
    core = np.asarray(core_rot.euler_to_matrix(ang))
    np.testing.assert_allclose(mine, core, atol=1e-10)
    np.testing.assert_allclose(euler_to_matrix(matrix_to_euler(mine)), mine, atol=1e-10)
    r = random_rotations(20, rng)
    np.testing.assert_allclose(relion_euler_to_matrices(matrices_to_relion_euler(r)), r, atol=1e-10)
    # RELION angles describe R^T (particle -> reference)
    np.testing.assert_allclose(
        euler_to_matrix(matrices_to_relion_euler(r)), np.swapaxes(r, 1, 2), atol=1e-10
    )


@pytest.mark.parametrize("step", [60.0, 30.0])
def test_covering_radius_is_about_the_step(rng, step):
    grid = rotation_set(angular_step=step).numpy().astype(np.float64)
    assert len(grid) == n_rotations_for_step(step)
    probe = random_rotations(3000, rng)
    d = rotation_angle_deg(probe[:, None], grid[None]).min(axis=1)
    assert d.max() <= 1.15 * step
    assert d.max() >= 0.6 * step  # not absurdly over-sampled either
    assert n_rotations_for_step(30.0) == 360


@pytest.mark.parametrize("sym", ["C2", "C4", "D2", "D3"])
def test_symmetry_reduction_keeps_one_unit(rng, sym):
    full = super_fibonacci_rotations(360)
    red = rotation_set(n_rotations=360, symmetry=sym).numpy().astype(np.float64)
    g = symmetry_matrices(sym)
    assert abs(len(red) - 360 / len(g)) <= 0.15 * 360 / len(g)
    # every full-set rotation is equivalent (R S) to a kept one within the full set's spacing
    probe = random_rotations(400, rng)
    equiv = probe[:, None] @ g[None]  # (p, |G|, 3, 3)
    d_red = rotation_angle_deg(equiv[:, :, None], red[None, None]).min(axis=(1, 2))
    d_full = rotation_angle_deg(probe[:, None], full[None]).min(axis=1)
    # the unit boundary costs a little coverage (no symmetric partner inside the unit)
    assert d_red.max() <= 1.3 * d_full.max()


def test_cone_and_errors():
    cone = rotation_set(angular_step=30.0, cone_axis=(1.0, 0.0, 0.0), cone_angle=30.0)
    assert np.all(cone.numpy()[:, 0, 2] >= np.cos(np.radians(30)) - 1e-6)
    with pytest.raises(InputError):
        rotation_set(angular_step=30.0, n_rotations=10)
    with pytest.raises(InputError):
        symmetry_matrices("T")
    with pytest.raises(InputError):
        rotation_set(n_rotations=50, cone_angle=0.1)
