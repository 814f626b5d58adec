"""Shared simulated data for the tracking tests (small, seeded, planted truth)."""

from __future__ import annotations

import numpy as np
import pytest

from corrscan.synthetic.beads import simulate_beads, simulate_focus_sweep
from corrscan.track import ZLUT, build_zlut

Z_LUT = np.arange(-4000.0, 4000.0 + 1, 100.0)  # 81 planes, 100 nm apart


@pytest.fixture(scope="session")
def zlut() -> ZLUT:
    """Shared table from a noise-free focus sweep, bead on the centre pixel."""
    sweep, _ = simulate_focus_sweep(Z_LUT)
    return build_zlut(sweep, Z_LUT, center="roi")


def planted(n: int, *, seed: int, xy_nm: float = 150.0, z_nm: float = 3000.0) -> np.ndarray:
    """`(n, 3)` planted (dx, dy, z) nm: uniform sub-pixel offsets and focus positions."""
    rng = np.random.default_rng(seed)
    return np.c_[rng.uniform(-xy_nm, xy_nm, (n, 2)), rng.uniform(-z_nm, z_nm, n)]


@pytest.fixture(scope="session")
def beads_clean() -> tuple[np.ndarray, dict, np.ndarray]:
    xyz = planted(200, seed=11)
    stack, truth = simulate_beads(xyz)
    return stack, truth, xyz


@pytest.fixture(scope="session")
def beads_noisy() -> tuple[np.ndarray, dict, np.ndarray]:
    xyz = planted(200, seed=12)
    stack, truth = simulate_beads(xyz, photons=1000.0, seed=5)
    return stack, truth, xyz


def rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(a, dtype=np.float64) ** 2)))
