"""Synthetic stacks shared by the likelihood tests (module-scoped: built once)."""

from __future__ import annotations

import numpy as np
import pytest

from corrscan.likelihood.ctf import CtfParams
from corrscan.likelihood.grid import PolarGrid, viewing_grid_fibonacci
from corrscan.likelihood.templates import atoms_to_polar_templates
from corrscan.synthetic.particles import random_chain

N_PIXELS, PIXEL_SIZE, SIGMA = 32, 3.0, 2.5
CTF_COLUMNS = [
    "defocus_u",
    "defocus_v",
    "astigmatism_angle",
    "voltage",
    "spherical_aberration",
    "amplitude_contrast",
    "phase_shift",
    "b_factor",
]


def ctf_from_truth(truth) -> CtfParams:
    return CtfParams(**{k: truth[k].to_numpy() for k in CTF_COLUMNS})


@pytest.fixture(scope="module")
def structure():
    """True and decoy pseudo-atom chains, grid, viewing grid and both template sets."""
    grid = PolarGrid.create(N_PIXELS, PIXEL_SIZE)
    viewing = viewing_grid_fibonacci(100)
    atoms = random_chain(150, radius=25, seed=11)
    decoy = random_chain(150, radius=25, seed=12)
    return {
        "grid": grid,
        "viewing": viewing,
        "atoms": atoms,
        "templates": atoms_to_polar_templates(atoms, grid, viewing, sigma=SIGMA),
        "decoy_templates": atoms_to_polar_templates(decoy, grid, viewing, sigma=SIGMA),
    }


def on_grid_poses(viewing, grid, m: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template indices, rotation indices and Euler angles of ``m`` poses on the search grid."""
    rng = np.random.default_rng(seed)
    si = rng.integers(0, len(viewing), m)
    wi = rng.integers(0, grid.n_inplanes, m)
    euler = viewing.euler[si].copy()
    euler[:, 2] = np.rad2deg(grid.angles[wi])
    return si, wi, euler
