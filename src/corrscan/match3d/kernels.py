"""Compiled CPU kernels of the 3D search hot loop (numba, GIL released).

Two operations that torch does in several memory passes or with per-call overhead:

* :func:`rotate_points` — real-space rotation of one template box by a batch of matrices,
  trilinear (8 taps) or cubic B-spline on prefiltered coefficients (64 taps), evaluated only at
  the output voxels that can be non-zero. Same maths as the ``grid_sample`` path of
  :class:`corrscan.match3d.rotate.TemplateRotator` (``backend="torch"``); 3-4x faster than
  ``scipy.ndimage.affine_transform`` on a 32^3 box.
* :func:`max_update` — the analyzer update in one pass: optional per-voxel scale, strict-greater
  max and arg-max over a batch of score maps (earlier batch items win ties), per-map sum and
  sum of squares (float32 within a row, float64 across rows). A batch of two maps stored as the
  real and imaginary parts of one complex array (the paired-FFT layout of
  :class:`corrscan.match3d.scores.BoxScorer`) is read in place.

Both release the GIL (``nogil=True``), so rotation-parallel worker threads run them
concurrently. :data:`AVAILABLE` is False when numba cannot be imported; callers then use torch.
Compiled code is cached on disk by numba (``cache=True``); see :mod:`corrscan.core.jit`.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from corrscan.core.jit import AVAILABLE, njit, run_parallel

__all__ = ["AVAILABLE", "max_update", "rotate_points"]

#: fast-math without ``nnan``/``ninf``: comparisons with NaN and -inf keep IEEE semantics
_SAFE_FASTMATH = {"reassoc", "contract", "arcp", "nsz", "afn"}


# ---------------------------------------------------------------------------- rotation
@njit(nogil=True, fastmath=True, cache=True, inline="always")
def _source_position(points, k, m, centre):  # pragma: no cover - compiled
    """``points[k] @ m + centre``: the (x, y, z) source index of output point ``k``."""
    px = points[k, 0]
    py = points[k, 1]
    pz = points[k, 2]
    x = px * m[0, 0] + py * m[1, 0] + pz * m[2, 0] + centre[0]
    y = px * m[0, 1] + py * m[1, 1] + pz * m[2, 1] + centre[1]
    z = px * m[0, 2] + py * m[1, 2] + pz * m[2, 2] + centre[2]
    return x, y, z


@njit(nogil=True, fastmath=True, cache=True)
def _rotate_linear(src, points, keep, mats, centre, out):  # pragma: no cover - compiled
    d, h, w = src.shape
    for b in range(mats.shape[0]):
        m = mats[b]
        for k in range(points.shape[0]):
            x, y, z = _source_position(points, k, m, centre)
            x0 = int(np.floor(x))
            y0 = int(np.floor(y))
            z0 = int(np.floor(z))
            fx = x - x0
            fy = y - y0
            fz = z - z0
            acc = np.float32(0.0)
            for dz in range(2):
                zi = z0 + dz
                if zi < 0 or zi >= d:
                    continue
                wz = fz if dz else np.float32(1.0) - fz
                for dy in range(2):
                    yi = y0 + dy
                    if yi < 0 or yi >= h:
                        continue
                    wy = fy if dy else np.float32(1.0) - fy
                    for dx in range(2):
                        xi = x0 + dx
                        if xi < 0 or xi >= w:
                            continue
                        wx = fx if dx else np.float32(1.0) - fx
                        acc += wz * wy * wx * src[zi, yi, xi]
            out[b, keep[k]] = acc


@njit(nogil=True, fastmath=True, cache=True)
def _bspline3_weights(t, wts):  # pragma: no cover - compiled
    t2 = t * t
    t3 = t2 * t
    u = np.float32(1.0) - t
    wts[0] = u * u * u / np.float32(6.0)
    wts[1] = (np.float32(3.0) * t3 - np.float32(6.0) * t2 + np.float32(4.0)) / np.float32(6.0)
    wts[2] = (
        -np.float32(3.0) * t3 + np.float32(3.0) * t2 + np.float32(3.0) * t + np.float32(1.0)
    ) / np.float32(6.0)
    wts[3] = t3 / np.float32(6.0)


@njit(nogil=True, fastmath=True, cache=True)
def _rotate_cubic(coef, points, keep, mats, centre, out):  # pragma: no cover - compiled
    d, h, w = coef.shape
    wx = np.empty(4, np.float32)
    wy = np.empty(4, np.float32)
    wz = np.empty(4, np.float32)
    for b in range(mats.shape[0]):
        m = mats[b]
        for k in range(points.shape[0]):
            x, y, z = _source_position(points, k, m, centre)
            x0 = int(np.floor(x))
            y0 = int(np.floor(y))
            z0 = int(np.floor(z))
            _bspline3_weights(np.float32(x - x0), wx)
            _bspline3_weights(np.float32(y - y0), wy)
            _bspline3_weights(np.float32(z - z0), wz)
            acc = np.float32(0.0)
            if x0 >= 1 and y0 >= 1 and z0 >= 1 and x0 + 2 < w and y0 + 2 < h and z0 + 2 < d:
                for a in range(4):
                    za = z0 - 1 + a
                    for c in range(4):
                        yc = y0 - 1 + c
                        s = (
                            wx[0] * coef[za, yc, x0 - 1]
                            + wx[1] * coef[za, yc, x0]
                            + wx[2] * coef[za, yc, x0 + 1]
                            + wx[3] * coef[za, yc, x0 + 2]
                        )
                        acc += wz[a] * wy[c] * s
            else:  # taps outside the coefficient box count as 0
                for a in range(4):
                    za = z0 - 1 + a
                    if za < 0 or za >= d:
                        continue
                    for c in range(4):
                        yc = y0 - 1 + c
                        if yc < 0 or yc >= h:
                            continue
                        s = np.float32(0.0)
                        for q in range(4):
                            xq = x0 - 1 + q
                            if 0 <= xq < w:
                                s += wx[q] * coef[za, yc, xq]
                        acc += wz[a] * wy[c] * s
            out[b, keep[k]] = acc


def rotate_points(
    source: np.ndarray,
    points: np.ndarray,
    keep: np.ndarray,
    matrices: np.ndarray,
    centre: np.ndarray,
    order: int,
    out: np.ndarray,
    threads: int = 1,
) -> np.ndarray:
    """Sample ``source`` at rotated points, in place into ``out``.

    Parameters
    ----------
    source
        `(D, H, W)` float32: the template (``order=1``) or its cubic B-spline coefficients
        (``order=3``); samples reaching outside it count as 0.
    points
        `(P, 3)` float32 ``(x, y, z)`` output voxel positions relative to the rotation centre.
    keep
        `(P,)` int64 flat output indices of ``points``.
    matrices
        `(B, 3, 3)` float32; the source position of point ``p`` is ``p @ M + centre``
        (i.e. ``M^T p``, so ``M = R`` samples ``g(R^T p)``: the template turned by ``R``).
    centre
        `(3,)` float32 ``(x, y, z)`` source index of the rotation centre.
    order
        1 or 3.
    out
        `(B, N)` float32, written at ``keep`` (other entries untouched).
    threads
        Split the points between this many threads (same values).
    """
    mats = np.ascontiguousarray(matrices, dtype=np.float32)
    kernel = _rotate_linear if order == 1 else _rotate_cubic
    n = points.shape[0]
    edges = np.linspace(0, n, max(1, min(threads, n // 1024 + 1)) + 1).astype(int)
    run_parallel(
        [(kernel, (source, points[a:b], keep[a:b], mats, centre, out)) for a, b in pairwise(edges)]
    )
    return out


# ---------------------------------------------------------------------------- analyzer update
@njit(nogil=True, fastmath=_SAFE_FASTMATH, cache=True)
def _update_pair(
    zr, scale, use_scale, cur, rot, i0, i1, acc, ties_new
):  # pragma: no cover - compiled
    d, h, w, _ = zr.shape
    v0 = np.empty(w, np.float32)
    v1 = np.empty(w, np.float32)
    a0 = 0.0
    a1 = 0.0
    q0 = 0.0
    q1 = 0.0
    for z in range(d):
        for y in range(h):
            row = zr[z, y]
            if use_scale:
                srow = scale[z, y]
                for x in range(w):
                    v0[x] = row[x, 0] * srow[x]
                    v1[x] = row[x, 1] * srow[x]
            else:
                for x in range(w):
                    v0[x] = row[x, 0]
                    v1[x] = row[x, 1]
            b0 = np.float32(0.0)
            b1 = np.float32(0.0)
            p0 = np.float32(0.0)
            p1 = np.float32(0.0)
            for x in range(w):
                b0 += v0[x]
                p0 += v0[x] * v0[x]
            for x in range(w):
                b1 += v1[x]
                p1 += v1[x] * v1[x]
            a0 += b0
            q0 += p0
            a1 += b1
            q1 += p1
            crow = cur[z, y]
            n_up = 0
            if ties_new:  # a tie may go to the new pair (checked exactly below)
                for x in range(w):
                    n_up += (v0[x] >= crow[x]) | (v1[x] >= crow[x])
            else:
                for x in range(w):
                    n_up += (v0[x] > crow[x]) | (v1[x] > crow[x])  # NaN never wins
            if n_up:
                rrow = rot[z, y]
                for x in range(w):
                    # the pair's winner (i0 on a tie; a NaN never wins), then against the map
                    if (v1[x] > v0[x]) | (v0[x] != v0[x]):
                        vb = v1[x]
                        ib = i1
                    else:
                        vb = v0[x]
                        ib = i0
                    c = crow[x]
                    r = rrow[x]
                    if (vb > c) | (ties_new & (vb == c) & (r >= 0)):
                        crow[x] = vb
                        rrow[x] = ib
    acc[0, 0] += a0
    acc[0, 1] += q0
    acc[1, 0] += a1
    acc[1, 1] += q1


@njit(nogil=True, fastmath=_SAFE_FASTMATH, cache=True)
def _update_one(sc, scale, use_scale, cur, rot, i0, acc, ties_new):  # pragma: no cover - compiled
    d, h, w = sc.shape
    v0 = np.empty(w, np.float32)
    a0 = 0.0
    q0 = 0.0
    for z in range(d):
        for y in range(h):
            row = sc[z, y]
            if use_scale:
                srow = scale[z, y]
                for x in range(w):
                    v0[x] = row[x] * srow[x]
            else:
                for x in range(w):
                    v0[x] = row[x]
            b0 = np.float32(0.0)
            p0 = np.float32(0.0)
            for x in range(w):
                b0 += v0[x]
                p0 += v0[x] * v0[x]
            a0 += b0
            q0 += p0
            crow = cur[z, y]
            n_up = 0
            if ties_new:
                for x in range(w):
                    n_up += v0[x] >= crow[x]
            else:
                for x in range(w):
                    n_up += v0[x] > crow[x]
            if n_up:
                rrow = rot[z, y]
                for x in range(w):
                    c = crow[x]
                    if (v0[x] > c) | (ties_new & (v0[x] == c) & (rrow[x] >= 0)):
                        crow[x] = v0[x]
                        rrow[x] = i0
    acc[0] += a0
    acc[1] += q0


def _update_slab(scores, scale, cur, rot, idx, acc, ties_new) -> None:
    """All items of one z-slab in order (ties: the earlier item wins); GIL released inside."""
    use = scale is not None
    sc = scale if use else _NO_SCALE
    first = 0
    if scores.shape[0] >= 2 and scores.strides[0] == scores.itemsize:  # complex pairs
        zr = np.moveaxis(scores[:2], 0, -1)
        _update_pair(zr, sc, use, cur, rot, idx[0], idx[1], acc[:2], ties_new)
        first = 2
    for j in range(first, scores.shape[0]):
        _update_one(scores[j], sc, use, cur, rot, idx[j], acc[j], ties_new)


_NO_SCALE = np.ones((1, 1, 1), dtype=np.float32)


def max_update(
    scores: np.ndarray,
    indices: np.ndarray,
    cur: np.ndarray,
    rot: np.ndarray,
    scale: np.ndarray | None = None,
    threads: int = 1,
    ties_to_new: bool = False,
) -> np.ndarray:
    """Fold score maps into the running max / arg-max maps in place; return the statistics.

    Parameters
    ----------
    scores
        `(B, D, H, W)` float32 (any strides). A batch of two whose item stride is 1 (the real
        and imaginary parts of one complex map) is read in place as pairs.
    indices
        `(B,)` rotation indices, ascending (the earlier item wins a tie).
    cur, rot
        `(D, H, W)` float32 running max and int32 arg-max, updated where a (scaled) score is
        strictly greater.
    scale
        Optional `(D, H, W)` float32 factor applied to every map first.
    threads
        Split the volume into this many z-slabs updated in parallel (same maps; the
        statistics are summed slab by slab, so they round differently for another count).
    ties_to_new
        For batches fed in DESCENDING rotation order (indices smaller than every stored one):
        a new score equal to the stored one (and not the empty fill) takes the voxel, so the
        smaller rotation index still wins ties. Within a batch the earlier item wins.

    Returns
    -------
    numpy.ndarray
        `(B, 2)` float64: per map, the sum and the sum of squares of the scaled scores.
    """
    b = scores.shape[0]
    d = cur.shape[0]
    if scores.shape[1:] != cur.shape or rot.shape != cur.shape or len(indices) != b:
        raise ValueError(f"max_update: scores {scores.shape} vs maps {cur.shape}/{rot.shape}")
    if scale is not None and scale.shape != cur.shape:
        raise ValueError(f"max_update: scale {scale.shape} vs maps {cur.shape}")
    n_slab = max(1, min(int(threads), d))
    edges = np.linspace(0, d, n_slab + 1).astype(int)
    acc = np.zeros((n_slab, b, 2), dtype=np.float64)
    idx = [int(i) for i in indices]
    tasks = []
    for k, (z0, z1) in enumerate(pairwise(edges)):
        sl = None if scale is None else scale[z0:z1]
        args = (scores[:, z0:z1], sl, cur[z0:z1], rot[z0:z1], idx, acc[k], bool(ties_to_new))
        tasks.append((_update_slab, args))
    run_parallel(tasks)
    return acc.sum(axis=0)
