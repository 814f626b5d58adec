"""Fine histograms of voxel samples with per-bin sufficient statistics.

The GMM is fitted to a histogram rather than to millions of voxels: per bin we keep the count,
the sum and the sum of squares of the values that fell in it, so the EM M-step uses the exact
first and second moments of every bin (only the responsibilities are evaluated at the bin
mean). Sums are kept in standardised units ``u = (x - median) / robust_std`` so that data with a
large offset (portal tomograms span ±0.001 to ±40,000) lose no precision. Bins are uniform
over a robust core range ``median ± k · robust_std`` (robust std from the inter-quartile range,
so outliers do not coarsen the bins) and, outside it, uniform over each tail up to the
sample's minimum/maximum; nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BinnedSample", "bin_sample", "robust_range"]

_IQR_TO_STD = 1.3489795003921634  # IQR of a standard normal


def robust_range(values: np.ndarray, *, k: float = 8.0) -> tuple[float, float, float, float]:
    """``(lo, hi, median, robust_std)`` of a 1-D finite sample.

    ``robust_std`` = IQR / 1.349 (the standard deviation for Gaussian data), falling back to the
    standard deviation when more than half of the values are equal; ``lo, hi`` =
    ``median ∓ k · robust_std`` clipped to the sample's ``[min, max]``. Quantiles are taken on at
    most 2**18 evenly strided values (the sample is already random).
    """
    vmin = float(values.min())
    vmax = float(values.max())
    sub = values[:: max(1, values.size >> 18)]
    q25, med, q75 = (float(v) for v in np.quantile(sub, [0.25, 0.5, 0.75]))
    s = (q75 - q25) / _IQR_TO_STD
    if not s > 0:
        s = float(np.std(sub, dtype=np.float64))
    if not s > 0:
        s = vmax - vmin
    lo = max(vmin, med - k * s)
    hi = min(vmax, med + k * s)
    return lo, hi, med, s


@dataclass(frozen=True)
class BinnedSample:
    """Non-empty bins of a sample with their sufficient statistics (float64, sorted by value).

    All per-bin quantities are in standardised units ``u = (x - shift) / scale`` with
    ``shift`` = median and ``scale`` = robust std of the sample.

    Attributes
    ----------
    counts, sum1, sum2
        `(m,)` count, sum of ``u`` and sum of ``u**2`` of the values in each non-empty bin.
    left, right
        `(m,)` bin edges in ``u``.
    n
        Number of values.
    minimum, maximum, mean, variance
        Of the whole sample, in data units.
    shift, scale
        Median and robust std (data units) defining ``u``.
    """

    counts: np.ndarray
    sum1: np.ndarray
    sum2: np.ndarray
    left: np.ndarray
    right: np.ndarray
    n: int
    minimum: float
    maximum: float
    mean: float
    variance: float
    shift: float
    scale: float

    @property
    def centers(self) -> np.ndarray:
        """`(m,)` mean ``u`` of each bin."""
        return self.sum1 / self.counts


def _edges(lo: float, hi: float, vmin: float, vmax: float, n_core: int, n_tail: int) -> np.ndarray:
    parts = []
    if vmin < lo:
        parts.append(np.linspace(vmin, lo, n_tail + 1)[:-1])
    parts.append(np.linspace(lo, hi, n_core + 1))
    if vmax > hi:
        parts.append(np.linspace(hi, vmax, n_tail + 1)[1:])
    return np.concatenate(parts)


def bin_sample(
    values: np.ndarray,
    *,
    n_core_bins: int = 1024,
    n_tail_bins: int = 128,
    k: float = 8.0,
    chunk: int = 1 << 15,
) -> BinnedSample:
    """Histogram ``values`` (1-D, finite) with per-bin count, sum and sum of squares.

    Parameters
    ----------
    n_core_bins
        Uniform bins over the robust core range (``median ± k · robust_std``).
    n_tail_bins
        Uniform bins over each tail beyond the core range (only when the tail is not empty).
    chunk
        Values processed at a time (bounds the temporaries to a few MiB).
    """
    lo, hi, med, rstd = robust_range(values, k=k)
    vmin = float(values.min())
    vmax = float(values.max())
    if vmax <= vmin:  # constant sample: one bin
        n = values.size
        one = np.ones(1)
        zero = np.zeros(1)
        return BinnedSample(one * n, zero, zero, zero, zero, n, vmin, vmax, vmin, 0.0, vmin, 1.0)
    # Work in u = (x - med) / rstd throughout.
    lo, hi, vmin, vmax = ((v - med) / rstd for v in (lo, hi, vmin, vmax))
    edges = _edges(lo, hi, vmin, vmax, n_core_bins, n_tail_bins)
    n_bins = edges.size - 1
    n_low = n_tail_bins if vmin < lo else 0
    core_w = (hi - lo) / n_core_bins
    low_w = (lo - vmin) / n_tail_bins if n_low else 1.0
    high_w = (vmax - hi) / n_tail_bins if vmax > hi else 1.0
    counts = np.zeros(n_bins)
    s1 = np.zeros(n_bins)
    s2 = np.zeros(n_bins)
    for start in range(0, values.size, chunk):
        x = values[start : start + chunk].astype(np.float64)
        x -= med
        x /= rstd
        # Core bins by arithmetic; the (rare) tail values by their own uniform grids.
        idx = np.floor((x - lo) / core_w).astype(np.int64)
        np.clip(idx, 0, n_core_bins - 1, out=idx)
        idx += n_low
        below = x < lo
        if below.any():
            ib = np.floor((x[below] - vmin) / low_w).astype(np.int64)
            idx[below] = np.clip(ib, 0, n_tail_bins - 1)
        above = x > hi
        if above.any():
            ia = np.floor((x[above] - hi) / high_w).astype(np.int64)
            idx[above] = n_low + n_core_bins + np.clip(ia, 0, n_tail_bins - 1)
        counts += np.bincount(idx, minlength=n_bins)
        s1 += np.bincount(idx, weights=x, minlength=n_bins)
        s2 += np.bincount(idx, weights=x * x, minlength=n_bins)
    keep = counts > 0
    n = int(values.size)
    mean_u = float(s1.sum() / n)
    var_u = float(max(s2.sum() / n - mean_u * mean_u, 0.0))
    return BinnedSample(
        counts[keep], s1[keep], s2[keep], edges[:-1][keep], edges[1:][keep], n,
        float(values.min()), float(values.max()), med + rstd * mean_u, rstd * rstd * var_u,
        med, rstd,
    )  # fmt: skip
