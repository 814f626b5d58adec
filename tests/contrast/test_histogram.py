"""Fine histograms with per-bin sufficient statistics."""

from __future__ import annotations

import numpy as np
import pytest

from corrscan.contrast.histogram import bin_sample, robust_range


def test_robust_range_ignores_outliers() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, 200_000)
    x[:20] = 1e6
    lo, hi, med, s = robust_range(x, k=8.0)
    assert med == pytest.approx(3.0, abs=0.03)
    assert s == pytest.approx(2.0, rel=0.02)
    assert lo == pytest.approx(max(x.min(), med - 8 * s))
    assert hi == pytest.approx(med + 8 * s)


@pytest.mark.parametrize("offset", [0.0, 4e4, -1e6])
def test_binned_moments_are_exact(offset: float) -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [rng.normal(0, 1, 50_000), rng.normal(-3, 0.3, 5000), rng.uniform(15, 40, 30)]
    )
    x = (x * 0.001 + offset) if offset else x
    b = bin_sample(x, chunk=4096)
    assert b.n == x.size and b.counts.sum() == x.size
    # Sufficient statistics reproduce the exact mean and variance (float64 reference).
    assert b.mean == pytest.approx(x.mean(), rel=1e-12, abs=1e-12 * abs(offset) + 1e-15)
    assert b.variance == pytest.approx(x.var(), rel=1e-7)
    assert b.minimum == x.min() and b.maximum == x.max()
    # Every value lies within its bin's edges; bins sorted and non-empty.
    u = (x - b.shift) / b.scale
    assert np.all(np.diff(b.left) > 0) and np.all(b.counts > 0)
    assert np.all(b.centers >= b.left - 1e-12) and np.all(b.centers <= b.right + 1e-12)
    assert u.min() >= b.left[0] - 1e-9 and u.max() <= b.right[-1] + 1e-9
    # Tails are binned too (nothing dropped): the outliers land in the upper tail.
    assert b.right[-1] == pytest.approx(u.max())


def test_constant_sample() -> None:
    b = bin_sample(np.full(100, 2.5))
    assert b.counts.tolist() == [100] and b.mean == 2.5 and b.variance == 0.0
