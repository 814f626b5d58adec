"""CDF-gradient and percentile limits."""

from __future__ import annotations

import numpy as np
import pytest

from corrscan.contrast.cdf import cdf_gradient, cdf_limits, percentile_limits
from corrscan.contrast.histogram import robust_range
from corrscan.errors import InputError


def test_gradient_formula() -> None:
    h = np.array([0, 2, 6, 10, 4, 0, 1, 0, 0, 0], dtype=float)
    g = cdf_gradient(h)
    n = h.sum()
    # Interior: (h_i + h_{i+1}) / (2N); ends: one-sided differences of the CDF.
    for i in range(1, h.size - 1):
        assert g[i] == pytest.approx((h[i] + h[i + 1]) / (2 * n))
    assert g[0] == pytest.approx(h[1] / n) and g[-1] == pytest.approx(h[-1] / n)
    np.testing.assert_allclose(g, np.gradient(np.cumsum(h) / n))


def _reference_cdf_limits(x: np.ndarray, t: float = 0.3, n_bins: int = 512):
    """Loop-by-loop transcription of the method's definition (slow reference)."""
    lo, hi, _, _ = robust_range(x)
    h, edges = np.histogram(x, bins=n_bins, range=(lo, hi))
    cdf = np.cumsum(h) / h.sum()
    g = [0.0] * n_bins
    for i in range(n_bins):
        a = cdf[i - 1] if i > 0 else cdf[0]
        b = cdf[i + 1] if i < n_bins - 1 else cdf[-1]
        g[i] = (b - a) / (2 if 0 < i < n_bins - 1 else 1)
    p = max(g)
    i_rise = next(i for i in range(n_bins) if g[i] > t * p)
    start = max(0.01, sum(g[:i_rise]) / i_rise / p) if i_rise > 0 else 0.01
    peak = g.index(p)
    j = next((i for i in range(peak, n_bins) if g[i] < t * p), None)
    end = max(0.01, float(np.median(g[j:])) / p) if j is not None else 0.01
    low = edges[next(i for i in range(n_bins) if g[i] > start * p)]
    k = next((i for i in range(peak, n_bins) if g[i] < end * p), None)
    high = edges[k] if k is not None else edges[-1]
    return float(np.clip(low, x.min(), x.max())), float(np.clip(high, x.min(), x.max()))


@pytest.mark.parametrize("seed", [0, 1])
def test_cdf_limits_match_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.concatenate(
        [rng.normal(0, 1, 90_000), rng.normal(-2.5, 0.8, 10_000), rng.uniform(15, 40, 20)]
    )
    res = cdf_limits(x)
    assert res.limits == pytest.approx(_reference_cdf_limits(x), abs=1e-12)
    assert 0.01 <= res.start_threshold < 0.3 and 0.01 <= res.end_threshold < 0.3


def test_cdf_high_limit_for_a_gaussian() -> None:
    """Thin tails: the high limit is where the density falls to 1 % of the mode, mu + 3.03 sd."""
    rng = np.random.default_rng(3)
    x = rng.normal(10.0, 2.0, 1_000_000)
    res = cdf_limits(x)
    assert res.end_threshold == pytest.approx(0.01)
    expected = 10.0 + 2.0 * np.sqrt(2 * np.log(100))
    bin_w = res.edges[1] - res.edges[0]
    assert res.limits[1] == pytest.approx(expected, abs=2 * bin_w + 0.05)
    assert res.limits[0] < 10.0 - 2 * 2.0


def test_outliers_do_not_coarsen_bins() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, 200_000)
    clean = cdf_limits(x).limits
    x[:10] = 1e5
    assert cdf_limits(x).limits == pytest.approx(clean, abs=0.05)


def test_cdf_bad_args_and_constant() -> None:
    x = np.arange(100.0)
    with pytest.raises(InputError):
        cdf_limits(x, gradient_threshold=1.5)
    with pytest.raises(InputError):
        cdf_limits(x, n_bins=2)
    assert cdf_limits(np.full(10, 3.0)).limits == (3.0, 3.0)


def test_percentiles_known_answers() -> None:
    x = np.arange(100.0)
    assert percentile_limits(x, low_percentile=5, high_percentile=95) == pytest.approx(
        (4.95, 94.05)
    )
    assert percentile_limits(x, low_percentile=0, high_percentile=100) == (0.0, 99.0)
    with pytest.raises(InputError):
        percentile_limits(x, low_percentile=50, high_percentile=50)
