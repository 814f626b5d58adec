"""CDF-gradient contrast limits (cryo-ET portal "cdf" method) and percentile limits.

CDF method, on a ``n_bins`` histogram of the sample:

1. ``cdf = cumsum(h) / N``; ``g`` = its central-difference derivative per bin (interior
   ``g_i = (h_i + h_{i+1}) / (2 N)``, one-sided at the two ends) and ``P = max g``.
2. ``i_rise`` = first bin with ``g > t P`` (``t = gradient_threshold``, default 0.3).
   ``start = mean(g[:i_rise]) / P`` (0.01 if ``i_rise = 0``);
   ``j`` = first bin at or after the peak with ``g < t P``;
   ``end = median(g[j:]) / P`` (0.01 if there is none); both at least 0.01.
3. low = left edge of the first bin with ``g > start P``; high = left edge of the first bin at
   or after the peak with ``g < end P`` (the range's end if none); both clipped to the sample's
   ``[min, max]``.

Differences from the peer (identical results on clean data):

- the histogram spans the robust range ``median ± k · robust_std`` (clipped to ``[min, max]``)
  instead of ``[min, max]``, so a few outliers do not stretch the bins; it is computed once;
- ``j`` is searched from the peak, not from ``i_rise``: the peer's search from ``i_rise`` stops
  at any noise dip on the rising side when the sample is small, and the end threshold then
  becomes the median of the whole bulk (high limit jumping from +3 sd to +1 sd).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from corrscan.contrast.histogram import robust_range
from corrscan.errors import InputError

__all__ = ["CDFResult", "cdf_gradient", "cdf_limits", "percentile_limits"]


@dataclass(frozen=True)
class CDFResult:
    """Limits and the intermediate quantities of the CDF method (data units)."""

    limits: tuple[float, float]
    edges: np.ndarray
    gradient: np.ndarray
    start_threshold: float
    end_threshold: float


def cdf_gradient(counts: np.ndarray) -> np.ndarray:
    """Central-difference derivative (per bin) of the normalised cumulative histogram.

    `(n_bins,)` in, `(n_bins,)` out; interior ``(h_i + h_{i+1}) / (2 N)``, ends one-sided.
    """
    h = np.asarray(counts, dtype=np.float64)
    n = h.sum()
    if h.size < 2 or n <= 0:
        return np.zeros_like(h)
    cdf = np.cumsum(h) / n
    g = np.empty_like(cdf)
    g[1:-1] = 0.5 * (cdf[2:] - cdf[:-2])
    g[0] = cdf[1] - cdf[0]
    g[-1] = cdf[-1] - cdf[-2]
    return g


def cdf_limits(
    values: np.ndarray,
    *,
    gradient_threshold: float = 0.3,
    n_bins: int = 512,
    robust_k: float = 8.0,
) -> CDFResult:
    """CDF-gradient limits of a 1-D finite sample (see the module docstring)."""
    if not 0.0 < gradient_threshold < 1.0:
        raise InputError(f"gradient_threshold must be in (0, 1), got {gradient_threshold}")
    if int(n_bins) < 3:
        raise InputError(f"n_bins must be >= 3, got {n_bins}")
    vmin, vmax = float(values.min()), float(values.max())
    if vmax <= vmin:
        return CDFResult((vmin, vmax), np.array([vmin, vmax]), np.ones(1), 0.01, 0.01)
    lo, hi, _, _ = robust_range(values, k=robust_k)
    counts, edges = np.histogram(values, bins=int(n_bins), range=(lo, hi))
    g = cdf_gradient(counts)
    peak_value = float(g.max())
    if peak_value <= 0:
        return CDFResult((lo, hi), edges, g, 0.01, 0.01)
    rise = g > gradient_threshold * peak_value
    i_rise = int(np.argmax(rise))
    start = float(g[:i_rise].mean() / peak_value) if i_rise > 0 else 0.01
    start = max(start, 0.01)
    peak = int(np.argmax(g))
    fall = np.flatnonzero(g[peak:] < gradient_threshold * peak_value)
    end = float(np.median(g[peak + fall[0] :]) / peak_value) if fall.size else 0.01
    end = max(end, 0.01)
    low_idx = int(np.argmax(g > start * peak_value))
    after = np.flatnonzero(g[peak:] < end * peak_value)
    low = float(edges[low_idx])
    high = float(edges[peak + after[0]]) if after.size else float(edges[-1])
    low = float(np.clip(low, vmin, vmax))
    high = float(np.clip(high, vmin, vmax))
    return CDFResult((low, high), edges, g, start, end)


def percentile_limits(
    values: np.ndarray, *, low_percentile: float = 1.0, high_percentile: float = 99.0
) -> tuple[float, float]:
    """Exact percentiles (linear interpolation) of a 1-D finite sample."""
    if not 0.0 <= low_percentile < high_percentile <= 100.0:
        raise InputError(
            "need 0 <= low_percentile < high_percentile <= 100, got "
            f"{low_percentile}, {high_percentile}"
        )
    lo, hi = np.percentile(values, [low_percentile, high_percentile])
    return float(lo), float(hi)
