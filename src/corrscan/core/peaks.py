"""Peak extraction: statistical cut-offs, distance-suppressed peak picking, sub-pixel fits.

Conventions: score maps are `(H, W)` or `(D, H, W)`; peak coordinates are integer pixel indices
in the same axis order (y, x) / (z, y, x), origin at the first pixel's centre. Sub-pixel
coordinates are floats in the same frame. Results are sorted by score, highest first; equal
scores keep raster (C) order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from corrscan.core.arrays import array_kind, check_ndim, to_like, to_tensor, unwrap
from corrscan.errors import InputError

__all__ = [
    "find_peaks",
    "gaussian_noise_zscore_cutoff",
    "maximum_filter",
    "maximum_filter_peaks",
    "parabolic_vertex",
    "subpixel_refine",
]

Metric = Literal["chebyshev", "euclidean"]

_MAX_PLATEAU = 100_000


# ----------------------------------------------------------------------------- cut-off


def gaussian_noise_zscore_cutoff(n_correlations: float, false_positives: float = 1.0) -> float:
    """Z-score above which pure Gaussian noise gives ``false_positives`` expected hits.

    For ``n`` independent standard normal scores, the expected number above ``z`` is
    ``n * P(Z > z) = n * erfc(z / sqrt(2)) / 2``; setting it to ``false_positives`` gives

        ``z* = sqrt(2) * erfcinv(2 * false_positives / n)``

    (Rickgauer et al. 2017; Leopard-EM's default with ``false_positives = 1`` per micrograph).

    Parameters
    ----------
    n_correlations
        Number of correlations in the search: valid pixels (voxels) times orientations times
        defocus values (times pixel sizes). Must be positive.
    false_positives
        Allowed expected number of false positives, ``0 < false_positives < n_correlations``.

    Returns
    -------
    float
        The cut-off in units of the noise standard deviation.
    """
    from scipy.special import erfcinv

    n = float(n_correlations)
    fp = float(false_positives)
    if not (math.isfinite(n) and n > 0):
        raise InputError(f"n_correlations must be positive and finite, got {n_correlations}")
    if not (math.isfinite(fp) and 0 < fp < n):
        raise InputError(
            f"false_positives must be in (0, n_correlations={n:g}), got {false_positives}"
        )
    return float(math.sqrt(2.0) * erfcinv(2.0 * fp / n))


# ----------------------------------------------------------------------------- filters


def _footprint_offsets(ndim: int, min_distance: float, metric: Metric) -> np.ndarray:
    """Integer offsets `(k, ndim)` with distance <= ``min_distance`` (the origin included)."""
    r = math.floor(min_distance)
    rng = np.arange(-r, r + 1)
    grids = np.stack(np.meshgrid(*([rng] * ndim), indexing="ij"), axis=-1).reshape(-1, ndim)
    if metric == "euclidean":
        keep = (grids.astype(np.float64) ** 2).sum(1) <= float(min_distance) ** 2
        grids = grids[keep]
    return grids.astype(np.int64)


def _box_max(t: torch.Tensor, lo: Sequence[int], hi: Sequence[int]) -> torch.Tensor:
    """Max over the box ``[i - lo, i + hi]`` per axis; outside the map counts as ``-inf``.

    Separable: per axis, a running maximum built by doubling (``O(log size)`` element-wise
    maxima per axis instead of ``size**ndim`` comparisons per pixel).
    """
    out = t
    for a in range(t.ndim):
        la, ha = int(lo[a]), int(hi[a])
        k = la + ha + 1
        if k == 1:
            continue
        n = out.shape[a]
        pad = [0, 0] * (t.ndim - 1 - a) + [la, ha]
        p = F.pad(out[None], pad, mode="constant", value=-math.inf)[0]  # length n + k - 1
        # run[j] = max(p[j : j + w]) for growing window widths w (powers of two)
        run, w = p, 1
        while 2 * w <= k:
            m = run.shape[a] - w
            run = torch.maximum(run.narrow(a, 0, m), run.narrow(a, w, m))
            w *= 2
        if w < k:  # combine two overlapping windows of width w to cover k
            run = torch.maximum(run.narrow(a, 0, n), run.narrow(a, k - w, n))
        else:
            run = run.narrow(a, 0, n)
        out = run
    return out.contiguous() if out is not t else t.clone()


def _ball_max(t: torch.Tensor, radius: float) -> torch.Tensor:
    """Max over the Euclidean ball ``|o| <= radius``; outside the map counts as ``-inf``.

    Row maxima of growing half-width along the last axis are combined with shifts along the
    other axes (about ``(2r+1)**(ndim-1) + r`` element-wise maxima).
    """
    nd = t.ndim
    r = math.floor(radius)
    if r == 0:
        return t.clone()
    pad = [r, r] * nd
    p = F.pad(t[None, None], pad, mode="constant", value=-math.inf)[0, 0]
    length = p.shape[-1]
    row = p.clone()
    inner = tuple(slice(r, r + s) for s in t.shape)
    out = torch.full_like(t, -math.inf)
    # offsets of the other axes, grouped by the half-width they need along the last axis
    rng = np.arange(-r, r + 1)
    others = np.stack(np.meshgrid(*([rng] * (nd - 1)), indexing="ij"), -1).reshape(-1, nd - 1)
    rho2 = (others.astype(np.float64) ** 2).sum(1)
    r2 = float(radius) ** 2
    widths = np.where(rho2 <= r2, np.floor(np.sqrt(np.maximum(r2 - rho2, 0.0))), -1).astype(int)
    for w in range(r + 1):
        if w > 0:
            sl = row[..., w : length - w]
            torch.maximum(sl, p[..., 0 : length - 2 * w], out=sl)
            torch.maximum(sl, p[..., 2 * w : length], out=sl)
        for off in others[widths == w]:
            idx = tuple(
                slice(r + int(o), r + int(o) + s) for o, s in zip(off, t.shape[:-1], strict=True)
            )
            torch.maximum(out, row[(*idx, inner[-1])], out=out)
    return out


def maximum_filter(
    score_map: Any,
    *,
    size: int | Sequence[int] | None = None,
    radius: float | None = None,
    metric: Metric = "chebyshev",
) -> Any:
    """Maximum filter of a `(H, W)` or `(D, H, W)` map; outside the map counts as ``-inf``.

    Equals ``scipy.ndimage.maximum_filter(score_map, size=size, mode="constant",
    cval=-inf)`` for ``size``; vectorised (separable running maxima for boxes).

    Parameters
    ----------
    score_map
        `(H, W)` or `(D, H, W)` real array (NumPy/CuPy/torch).
    size
        Box of ``size`` pixels per axis (int or one per axis); for even sizes the window is
        ``[i - size//2, i + size - 1 - size//2]`` (SciPy's convention).
    radius
        Instead of ``size``: all pixels within ``radius`` pixels in the ``metric`` (a box of
        side ``2*floor(radius)+1`` for Chebyshev, a ball for Euclidean).
    metric
        ``"chebyshev"`` or ``"euclidean"`` (``radius`` only).

    Returns
    -------
    filtered
        Same shape and kind as ``score_map`` (float32/float64).
    """
    t, restore = unwrap(score_map, name="score_map")
    check_ndim(t, (2, 3), "score_map", layout="(H, W) or (D, H, W)")
    return restore(_max_filter(_floating(t), size=size, radius=radius, metric=metric))


def _floating(t: torch.Tensor) -> torch.Tensor:
    if t.is_complex():
        raise InputError("score_map must be real")
    return t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float32)


def _max_filter(
    t: torch.Tensor,
    *,
    size: int | Sequence[int] | None = None,
    radius: float | None = None,
    metric: Metric = "chebyshev",
) -> torch.Tensor:
    nd = t.ndim
    if (size is None) == (radius is None):
        raise InputError("give exactly one of size or radius")
    if size is not None:
        sizes = (int(size),) * nd if isinstance(size, (int, np.integer)) else tuple(size)
        if len(sizes) != nd or any(int(s) < 1 for s in sizes):
            raise InputError(f"size must be >= 1 per axis ({nd} axes), got {size}")
        lo = [int(s) // 2 for s in sizes]
        hi = [int(s) - 1 - int(s) // 2 for s in sizes]
        return _box_max(t, lo, hi)
    if radius < 0:
        raise InputError(f"radius must be >= 0, got {radius}")
    if metric == "chebyshev":
        r = math.floor(radius)
        return _box_max(t, [r] * nd, [r] * nd) if r > 0 else t.clone()
    if metric == "euclidean":
        return _ball_max(t, float(radius))
    raise InputError(f"metric must be 'chebyshev' or 'euclidean', got {metric!r}")


def _border_mask(shape: Sequence[int], exclude_border: int | Sequence[int], device) -> torch.Tensor:
    nd = len(shape)
    eb = (
        (int(exclude_border),) * nd
        if isinstance(exclude_border, (int, np.integer))
        else tuple(int(e) for e in exclude_border)
    )
    if len(eb) != nd or any(e < 0 for e in eb):
        raise InputError(f"exclude_border must be >= 0 per axis ({nd} axes), got {exclude_border}")
    m = torch.zeros(tuple(shape), dtype=torch.bool, device=device)
    inner = tuple(
        slice(e, s - e) if s - 2 * e > 0 else slice(0, 0) for e, s in zip(eb, shape, strict=True)
    )
    m[inner] = True
    return m


def _sorted_candidates(t: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices and values of ``cand`` pixels sorted by value desc, flat index asc."""
    flat = torch.nonzero(cand.reshape(-1), as_tuple=False).reshape(-1)
    vals = t.reshape(-1)[flat]
    order = torch.sort(vals, descending=True, stable=True).indices
    return flat[order], vals[order]


def _unravel(flat: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    return torch.stack(torch.unravel_index(flat, tuple(shape)), dim=-1).to(torch.int64)


def _c_strides(shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """Element strides `(ndim,)` of a C-ordered array of ``shape`` (flat index = coords @ s)."""
    return torch.as_tensor([math.prod(shape[a + 1 :]) for a in range(len(shape))], device=device)


# ----------------------------------------------------------------------------- peak pickers


def find_peaks(
    score_map: Any,
    *,
    threshold: float | None = None,
    min_distance: float = 1,
    max_peaks: int | None = None,
    exclude_border: int | Sequence[int] = 0,
    metric: Metric = "chebyshev",
    return_scores: bool = False,
) -> Any:
    """Distance-suppressed peaks of a `(H, W)` or `(D, H, W)` score map.

    Definition (exact; the tests check it against a brute-force greedy implementation):

    1. Candidates: pixels whose score is the maximum of their neighbourhood ``N(p) = {q :
       dist(p, q) <= min_distance}`` (``metric``: ``"chebyshev"`` = max-norm, a box;
       ``"euclidean"`` = a ball; pixels outside the map are ignored), strictly above
       ``threshold`` (if given), finite, and at least ``exclude_border`` pixels from every
       edge.
    2. Greedy suppression in order of decreasing score (equal scores: raster order): a
       candidate is accepted unless it lies within ``min_distance`` of an accepted peak.
       Accepted peaks are therefore more than ``min_distance`` apart.

    Two candidates within ``min_distance`` of each other always have equal scores (each is
    the maximum of a neighbourhood containing the other), so step 2 only matters on exact
    plateaus; it is resolved by a loop over the accepted plateau peaks only. Everything else
    is vectorised (one max filter and a sort).

    Parameters
    ----------
    score_map
        `(H, W)` or `(D, H, W)` real scores (NumPy/CuPy/torch).
    threshold
        Keep scores ``> threshold`` (e.g. a :func:`gaussian_noise_zscore_cutoff` on a z-map).
    min_distance
        Suppression radius in pixels (>= 0; may be fractional for the Euclidean metric).
    max_peaks
        Keep at most this many (the highest).
    exclude_border
        Pixels excluded at each edge (int or one per axis).
    metric
        ``"chebyshev"`` (default) or ``"euclidean"``.
    return_scores
        Also return the peak scores `(n,)`.

    Returns
    -------
    coords
        `(n, ndim)` int64 pixel indices (y, x) / (z, y, x), sorted by score descending (same
        array kind as ``score_map``); with ``return_scores``, ``(coords, scores)``.
    """
    t, restore = unwrap(score_map, name="score_map")
    check_ndim(t, (2, 3), "score_map", layout="(H, W) or (D, H, W)")
    t = _floating(t)
    if not (min_distance >= 0 and math.isfinite(min_distance)):
        raise InputError(f"min_distance must be >= 0, got {min_distance}")
    if max_peaks is not None and int(max_peaks) < 0:
        raise InputError(f"max_peaks must be >= 0, got {max_peaks}")
    if metric not in ("chebyshev", "euclidean"):
        raise InputError(f"metric must be 'chebyshev' or 'euclidean', got {metric!r}")
    nd = t.ndim
    m = _max_filter(t, radius=float(min_distance), metric=metric)
    cand = (t == m) & torch.isfinite(t) & _border_mask(t.shape, exclude_border, t.device)
    if threshold is not None:
        cand &= t > float(threshold)
    flat, vals = _sorted_candidates(t, cand)
    k = flat.numel()
    if k > 1 and min_distance >= 1:
        flat, vals = _resolve_plateaus(flat, vals, t.shape, cand, float(min_distance), metric)
    if max_peaks is not None:
        flat, vals = flat[: int(max_peaks)], vals[: int(max_peaks)]
    coords = _unravel(flat, t.shape).reshape(-1, nd)
    if return_scores:
        return restore(coords), restore(vals)
    return restore(coords)


def _resolve_plateaus(
    flat: torch.Tensor,
    vals: torch.Tensor,
    shape: Sequence[int],
    cand: torch.Tensor,
    min_distance: float,
    metric: Metric,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy suppression among candidates that have another candidate within reach."""
    # only candidates sharing their score with another candidate can conflict
    same = vals[1:] == vals[:-1]
    tied = torch.zeros_like(vals, dtype=torch.bool)
    tied[1:] |= same
    tied[:-1] |= same
    if not bool(tied.any()):
        return flat, vals
    tpos = torch.nonzero(tied).reshape(-1)
    coords = _unravel(flat[tpos], shape)  # (T, nd)
    offs = torch.as_tensor(_footprint_offsets(len(shape), min_distance, metric), device=flat.device)
    offs = offs[(offs != 0).any(1)]
    shp = torch.as_tensor(tuple(shape), device=flat.device)
    tmask = torch.zeros(int(np.prod(shape)), dtype=torch.bool, device=flat.device)
    tmask[flat[tpos]] = True
    strides = _c_strides(shape, flat.device)
    conflicted = torch.zeros(tpos.numel(), dtype=torch.bool, device=flat.device)
    chunk = max(1, (1 << 22) // max(1, offs.shape[0]))
    for s in range(0, tpos.numel(), chunk):
        nb = coords[s : s + chunk, None, :] + offs[None]  # (c, k, nd)
        inside = ((nb >= 0) & (nb < shp)).all(-1)
        nflat = (nb.clamp(min=0) * strides).sum(-1).clamp(max=tmask.numel() - 1)
        conflicted[s : s + chunk] = (tmask[nflat] & inside).any(-1)
    if not bool(conflicted.any()):
        return flat, vals
    cpos = tpos[conflicted]
    n_c = cpos.numel()
    if n_c > _MAX_PLATEAU:
        raise InputError(
            f"score map has {n_c} plateau pixels (equal neighbouring maxima) among the "
            "candidates, e.g. a constant background: set threshold above the background"
        )
    cc = coords[conflicted].to(torch.float64).cpu().numpy()
    keep_c = np.zeros(n_c, dtype=bool)
    alive = np.ones(n_c, dtype=bool)
    md2 = min_distance**2
    for i in range(n_c):  # loop over accepted plateau peaks only (others skip immediately)
        if not alive[i]:
            continue
        keep_c[i] = True
        d = np.abs(cc - cc[i])
        near = (d.max(1) <= min_distance) if metric == "chebyshev" else ((d**2).sum(1) <= md2)
        alive &= ~near
    keep = torch.ones_like(vals, dtype=torch.bool)
    keep[cpos[torch.as_tensor(~keep_c, device=flat.device)]] = False
    return flat[keep], vals[keep]


def maximum_filter_peaks(
    score_map: Any,
    *,
    size: int | Sequence[int],
    threshold: float | None = None,
    exclude_border: int | Sequence[int] = 0,
    max_peaks: int | None = None,
    return_scores: bool = False,
) -> Any:
    """Pixels equal to the maximum of their ``size`` box, sorted by score descending.

    The pyTME ``PeakCallerMaximumFilter`` rule: every pixel equal to a box maximum filter of
    side ``size`` (SciPy window convention for even sizes; outside the map counts as
    ``-inf``), strictly above ``threshold``, ``exclude_border`` pixels from the edges. No
    plateau suppression: all pixels of a flat maximum are returned.

    Parameters
    ----------
    score_map
        `(H, W)` or `(D, H, W)` real scores (NumPy/CuPy/torch).
    size
        Box side in pixels (int or one per axis).
    threshold
        Keep scores ``> threshold``.
    exclude_border
        Pixels excluded at each edge (int or one per axis).
    max_peaks
        Keep at most this many (the highest).
    return_scores
        Also return the peak scores `(n,)`.

    Returns
    -------
    coords
        `(n, ndim)` int64 (y, x) / (z, y, x); with ``return_scores``, ``(coords, scores)``.
    """
    t, restore = unwrap(score_map, name="score_map")
    check_ndim(t, (2, 3), "score_map", layout="(H, W) or (D, H, W)")
    t = _floating(t)
    m = _max_filter(t, size=size)
    cand = (t == m) & torch.isfinite(t) & _border_mask(t.shape, exclude_border, t.device)
    if threshold is not None:
        cand &= t > float(threshold)
    flat, vals = _sorted_candidates(t, cand)
    if max_peaks is not None:
        flat, vals = flat[: int(max_peaks)], vals[: int(max_peaks)]
    coords = _unravel(flat, t.shape).reshape(-1, t.ndim)
    if return_scores:
        return restore(coords), restore(vals)
    return restore(coords)


# ----------------------------------------------------------------------------- sub-pixel


def _parabola(
    ym: torch.Tensor, y0: torch.Tensor, yp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    denom = ym - 2.0 * y0 + yp
    ok = denom < 0
    raw = torch.where(ok, 0.5 * (ym - yp) / torch.where(ok, denom, -1.0), 0.0)
    off = raw.clamp(-0.5, 0.5)
    flag = ~ok | (off != raw)
    height = y0 + 0.5 * off * (yp - ym) + 0.5 * off * off * torch.where(ok, denom, 0.0)
    return off, height, flag


def parabolic_vertex(y_minus: Any, y_0: Any, y_plus: Any, *, return_flag: bool = False) -> Any:
    """Vertex of the parabola through ``(-1, y_minus), (0, y_0), (1, y_plus)``.

    ``offset = (y_minus - y_plus) / (2 * (y_minus - 2 y_0 + y_plus))`` and
    ``height = y(offset)``. The offset is clamped to ``[-0.5, 0.5]`` (the vertex of a sampled
    local maximum always lies there); where the three points are not a local maximum
    (curvature >= 0) or the offset had to be clamped, the result is flagged, and for
    curvature >= 0 the offset is 0 and the height ``y_0``.

    Parameters
    ----------
    y_minus, y_0, y_plus
        Scalars or arrays of one shape (NumPy/CuPy/torch).
    return_flag
        Also return the boolean flag (True = clamped / not a maximum).

    Returns
    -------
    offset, height[, flag]
        Same kind and shape as ``y_0`` (Python floats/bool for scalar input).
    """
    scalar = all(
        isinstance(v, (int, float, np.floating, np.integer)) for v in (y_minus, y_0, y_plus)
    )
    like = y_0
    ts = [to_tensor(v, name=n) for v, n in ((y_minus, "y_minus"), (y_0, "y_0"), (y_plus, "y_plus"))]
    dt = (
        torch.float64
        if (scalar or array_kind(like) == "numpy" or any(t.dtype == torch.float64 for t in ts))
        else torch.float32
    )
    dev = ts[1].device
    ym, y0, yp = (t.to(device=dev, dtype=dt) for t in ts)
    off, h, flag = _parabola(ym, y0, yp)
    if scalar:
        out: tuple[Any, ...] = (float(off), float(h), bool(flag))
    else:
        out = (to_like(off, like), to_like(h, like), to_like(flag, like))
    return out if return_flag else out[:2]


def _quadratic_design(nd: int) -> tuple[np.ndarray, np.ndarray]:
    """Offsets `(3**nd, nd)` and the pseudo-inverse of the full quadratic design matrix."""
    offs = (
        np.stack(np.meshgrid(*([np.arange(-1, 2)] * nd), indexing="ij"), -1)
        .reshape(-1, nd)
        .astype(np.float64)
    )
    cols = [np.ones(len(offs))]
    cols += [offs[:, a] for a in range(nd)]
    cols += [offs[:, a] * offs[:, b] for a in range(nd) for b in range(a, nd)]
    a_mat = np.stack(cols, 1)
    return offs, np.linalg.pinv(a_mat)


def subpixel_refine(
    score_map: Any,
    coords: Any,
    *,
    method: Literal["parabolic", "gaussian", "quadratic"] = "parabolic",
    return_flags: bool = False,
) -> Any:
    """Sub-pixel peak positions and heights from the 3 (or 3**ndim) samples around each peak.

    Methods
    -------
    ``"parabolic"``
        Independent 1-D parabola per axis through ``(c-1, c, c+1)`` (:func:`parabolic_vertex`);
        height = ``y_0 + Σ_axes (height_axis - y_0)``. Exact for separable parabolas.
    ``"gaussian"``
        The same on ``log(score)``; exact for a sampled (axis-aligned) Gaussian peak. Needs the
        three samples > 0, else falls back to parabolic (flagged).
    ``"quadratic"``
        Least-squares full quadratic (with cross terms) over the `3**ndim` neighbourhood,
        vertex ``-H^{-1} g``; exact for any quadratic. Falls back to parabolic (flagged) where
        the fit is not a maximum, the vertex is more than 1 pixel away, or the neighbourhood
        leaves the map.

    Along an axis where a neighbour falls outside the map the offset is 0 (flagged).

    Parameters
    ----------
    score_map
        `(H, W)` or `(D, H, W)`.
    coords
        `(n, ndim)` integer peak indices (e.g. from :func:`find_peaks`).
    method
        See above.
    return_flags
        Also return `(n,)` bool flags (any clamp/fallback).

    Returns
    -------
    refined, values[, flags]
        `(n, ndim)` float64 coordinates and `(n,)` float64 heights (same kind as ``score_map``).
    """
    t, restore = unwrap(score_map, name="score_map")
    check_ndim(t, (2, 3), "score_map", layout="(H, W) or (D, H, W)")
    t = _floating(t).to(torch.float64)
    nd = t.ndim
    c = to_tensor(coords, device=t.device, name="coords", keep_integer=True)
    if c.is_floating_point():
        if not bool((c == c.round()).all()):
            raise InputError("coords must be integer pixel indices")
    c = (
        c.to(torch.int64).reshape(-1, nd)
        if c.numel()
        else torch.zeros((0, nd), dtype=torch.int64, device=t.device)
    )
    shp = torch.as_tensor(t.shape, device=t.device)
    if c.numel() and bool(((c < 0) | (c >= shp)).any()):
        raise InputError(f"coords must lie inside the map of shape {tuple(t.shape)}")
    if method not in ("parabolic", "gaussian", "quadratic"):
        raise InputError(f"method must be 'parabolic', 'gaussian' or 'quadratic', got {method!r}")
    strides = _c_strides(t.shape, t.device)
    tf = t.reshape(-1)

    def sample(pos: torch.Tensor) -> torch.Tensor:
        return tf[(pos.clamp(min=0).minimum(shp - 1) * strides).sum(-1)]

    y0 = sample(c)
    offsets = torch.zeros(c.shape, dtype=torch.float64, device=t.device)
    gain = torch.zeros(c.shape[0], dtype=torch.float64, device=t.device)
    flags = torch.zeros(c.shape[0], dtype=torch.bool, device=t.device)
    use_log = method == "gaussian"
    gain_log = torch.zeros_like(gain)
    all_pos = y0 > 0
    for a in range(nd):  # loop over axes (2 or 3), vectorised over peaks
        e = torch.zeros(nd, dtype=torch.int64, device=t.device)
        e[a] = 1
        inside = (c[:, a] > 0) & (c[:, a] < t.shape[a] - 1)
        ym, yp = sample(c - e), sample(c + e)
        off, h, fl = _parabola(ym, y0, yp)
        if use_log:
            pos = (ym > 0) & (y0 > 0) & (yp > 0)
            lm, l0, lp = (torch.log(torch.where(pos, v, 1.0)) for v in (ym, y0, yp))
            offl, hl, fll = _parabola(lm, l0, lp)
            off = torch.where(pos, offl, off)
            fl = torch.where(pos, fll, True)
            gain_log += torch.where(inside & pos, hl - l0, 0.0)
            all_pos &= pos | ~inside
        offsets[:, a] = torch.where(inside, off, 0.0)
        gain += torch.where(inside, h - y0, 0.0)
        flags |= fl | ~inside
    values = y0 + gain
    if use_log:
        values = torch.where(all_pos, y0 * torch.exp(gain_log), values)
    if method == "quadratic" and c.shape[0]:
        offs_np, pinv = _quadratic_design(nd)
        offs = torch.as_tensor(offs_np, device=t.device).to(torch.int64)
        nb = c[:, None, :] + offs[None]
        inside = ((nb >= 0) & (nb < shp)).all(-1).all(-1)
        vals = sample(nb)  # (n, 3**nd)
        p = vals @ torch.as_tensor(pinv, device=t.device).T  # (n, n_params)
        g = p[:, 1 : 1 + nd]
        hess = torch.zeros((c.shape[0], nd, nd), dtype=torch.float64, device=t.device)
        k = 1 + nd
        for a in range(nd):
            for b in range(a, nd):
                if a == b:
                    hess[:, a, a] = 2.0 * p[:, k]
                else:
                    hess[:, a, b] = hess[:, b, a] = p[:, k]
                k += 1
        # -H positive definite <=> a maximum; Cholesky tells and solves in one go
        chol, info = torch.linalg.cholesky_ex(-hess)
        neg_def = info == 0
        eye = torch.eye(nd, dtype=torch.float64, device=t.device)
        chol = torch.where(neg_def[:, None, None], chol, eye)
        vert = torch.cholesky_solve(g.unsqueeze(-1), chol).squeeze(-1)  # = -H^-1 g
        ok = neg_def & inside & (vert.abs() <= 1.0).all(-1)
        qval = p[:, 0] + 0.5 * (g * vert).sum(-1)
        offsets = torch.where(ok[:, None], vert, offsets)
        values = torch.where(ok, qval, values)
        flags = torch.where(ok, False, True)
    refined = c.to(torch.float64) + offsets
    out = (refined, values, flags)
    return restore(out if return_flags else out[:2])
