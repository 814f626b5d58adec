"""Histogram EM for Gaussian mixtures: against a float64 EM on the raw values; BIC; limits."""

from __future__ import annotations

import numpy as np
import pytest

from corrscan.contrast.gmm import DEFAULT_MULTIPLIERS, fit_gmm_series, gmm_limits
from corrscan.contrast.histogram import bin_sample
from corrscan.errors import InputError


def _sample(spec: list[tuple[float, float, float]], n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = np.array([s[0] for s in spec])
    counts = rng.multinomial(n, w / w.sum())
    parts = [rng.normal(m, s, c) for (_, m, s), c in zip(spec, counts, strict=True)]
    return rng.permutation(np.concatenate(parts))


def _raw_em(x: np.ndarray, mu: np.ndarray, sd: np.ndarray, w: np.ndarray, iters: int = 3000):
    """Plain float64 EM on every value (brute-force reference), until the log-likelihood
    changes by less than 1e-11 per value."""
    prev = -np.inf
    for _ in range(iters):
        logp = (
            np.log(w) - np.log(sd) - 0.5 * np.log(2 * np.pi) - 0.5 * ((x[:, None] - mu) / sd) ** 2
        )
        m = logp.max(axis=1, keepdims=True)
        r = np.exp(logp - m)
        ll = float((np.log(r.sum(axis=1)) + m[:, 0]).sum())
        r /= r.sum(axis=1, keepdims=True)
        nk = r.sum(axis=0)
        mu_new = (r * x[:, None]).sum(axis=0) / nk
        sd = np.sqrt((r * (x[:, None] - mu_new) ** 2).sum(axis=0) / nk)
        mu, w = mu_new, nk / x.size
        if abs(ll - prev) < 1e-11 * x.size:
            break
        prev = ll
    return w, mu, sd, ll


def test_histogram_em_matches_raw_em() -> None:
    x = _sample([(0.8, 0.0, 1.0), (0.2, -3.0, 0.6)], 20_000, seed=1)
    fits = fit_gmm_series(bin_sample(x), 2, tol=1e-12, max_iter=5000)
    w, mu, sd, ll = _raw_em(x, np.array([-3.0, 0.0]), np.array([0.5, 1.0]), np.array([0.5, 0.5]))
    f = fits[1]
    np.testing.assert_allclose(f.means, mu, atol=3e-3)
    np.testing.assert_allclose(f.stds, sd, atol=3e-3)
    np.testing.assert_allclose(f.weights, w, atol=2e-3)
    # Bin-mean likelihood approximation: within 1e-4 per sample of the exact one.
    assert abs(f.log_likelihood - ll) < 1e-4 * x.size
    # One component is the sample mean and (population) std.
    np.testing.assert_allclose(fits[0].means, [x.mean()], rtol=1e-9)
    np.testing.assert_allclose(fits[0].stds, [x.std()], rtol=1e-6)


@pytest.mark.parametrize(
    ("spec", "k_true", "chosen"),
    [
        ([(1.0, 5.0, 2.0)], 1, 0),
        ([(0.8, 0.0, 1.0), (0.2, -4.0, 0.7)], 2, 1),
        ([(0.15, -5.0, 0.6), (0.7, 0.0, 1.0), (0.15, 4.0, 0.5)], 3, 1),
    ],
)
def test_bic_picks_planted_count_and_limits_follow_spec(spec, k_true, chosen) -> None:
    x = _sample(spec, 200_000, seed=2)
    sel = gmm_limits(bin_sample(x))
    assert sel.best.n_components == k_true
    assert sel.chosen_component == chosen  # sorted by mean; the one nearest the sample mean
    _, mu, sd = spec[[s[1] for s in spec].index(sorted(s[1] for s in spec)[chosen])]
    a, b = DEFAULT_MULTIPLIERS[k_true]
    assert sel.multipliers == (a, b)
    assert sel.limits[0] == pytest.approx(mu - a * sd, abs=0.03 * sd)
    assert sel.limits[1] == pytest.approx(mu + b * sd, abs=0.03 * sd)


def test_multipliers_are_honoured() -> None:
    x = _sample([(0.8, 0.0, 1.0), (0.2, -4.0, 0.7)], 50_000, seed=3)
    b = bin_sample(x)
    base = gmm_limits(b)
    mu, sd = base.best.means[base.chosen_component], base.best.stds[base.chosen_component]
    custom = gmm_limits(b, low_std_multiplier=1.0, high_std_multiplier=2.0)
    assert custom.limits == pytest.approx((mu - 1.0 * sd, mu + 2.0 * sd))
    table = gmm_limits(b, multipliers={1: (1, 1), 2: (0.5, 0.25)})
    assert table.limits == pytest.approx((mu - 0.5 * sd, mu + 0.25 * sd))
    one = gmm_limits(b, max_components=1)
    assert one.best.n_components == 1 and one.multipliers == DEFAULT_MULTIPLIERS[1]
    with pytest.raises(InputError):
        gmm_limits(b, low_std_multiplier=-1.0)
    with pytest.raises(InputError):
        gmm_limits(b, max_components=0)


def test_limits_clipped_to_sample_range_and_constant() -> None:
    x = _sample([(1.0, 0.0, 1.0)], 10_000, seed=4)
    sel = gmm_limits(bin_sample(x), low_std_multiplier=100.0, high_std_multiplier=100.0)
    assert sel.limits == (x.min(), x.max())
    const = gmm_limits(bin_sample(np.full(50, 7.0)))
    assert const.limits == (7.0, 7.0)


def test_scale_and_offset_equivariance() -> None:
    x = _sample([(0.85, 0.0, 1.0), (0.15, -3.0, 0.5)], 100_000, seed=5)
    lo, hi = gmm_limits(bin_sample(x)).limits
    lo2, hi2 = gmm_limits(bin_sample(x * 2.5e4 - 1.7e4)).limits
    assert lo2 == pytest.approx(lo * 2.5e4 - 1.7e4, rel=1e-4)
    assert hi2 == pytest.approx(hi * 2.5e4 - 1.7e4, rel=1e-4)
