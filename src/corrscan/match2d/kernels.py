"""Compiled CPU kernel of the 2D search's per-chunk update (numba, GIL released).

:func:`chunk_reduce` reads a chunk of correlation maps once and does everything the search
needs from them: the noise normalisation, the per-pixel batch sums of the scores and of their
squares (for the correlation mean and variance), and the per-pixel maximum with the winning
search index over the valid region, folded straight into the stored MIP and index maps (a
larger score wins; on a tie the smaller search index; NaN never wins: the rule of
:class:`corrscan.core.stats.MaxAccumulator`). The torch form of the same update takes about
six passes over the chunk plus a candidate fold.

The maps are separate 2D arrays (one per inverse FFT, so each transform writes where it
likes); the kernel takes them as a fixed-length tuple of :data:`GROUP` arrays (padded), so
numba compiles it once whatever the chunk's length, and longer chunks run as consecutive
groups.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from corrscan.core.jit import AVAILABLE, njit

__all__ = ["AVAILABLE", "GROUP", "chunk_reduce"]

#: maps per compiled call (the tuple length the kernel is compiled for)
GROUP = 16

#: fast-math without ``nnan``/``ninf``: comparisons with NaN and -inf keep IEEE semantics
_SAFE_FASTMATH = {"reassoc", "contract", "arcp", "nsz", "afn"}


@njit(nogil=True, fastmath=_SAFE_FASTMATH, cache=True)
def _reduce_group(maps, n, scale, items, s1, s2, mip, index):  # pragma: no cover - compiled
    h, w = maps[0].shape
    hv, wv = mip.shape
    best = np.empty(w, np.float32)
    arg = np.empty(w, np.int32)
    r1 = np.empty(w, np.float32)
    r2 = np.empty(w, np.float32)
    for y in range(h):
        for x in range(w):
            best[x] = -np.inf
            arg[x] = -1  # stays -1 where every map is NaN (nothing to fold)
            r1[x] = 0.0
            r2[x] = 0.0
        for i in range(n):
            row = maps[i][y]
            sc = scale[i]
            ii = np.int32(i)
            for x in range(w):
                v = row[x] * sc
                r1[x] += v
                r2[x] += v * v
                b = best[x]
                # ascending items: strictly greater keeps the smaller index on ties, and a
                # NaN never wins (branch-free select, vectorised)
                take = v > b
                best[x] = v if take else b
                arg[x] = ii if take else arg[x]
        base = y * w
        for x in range(w):
            s1[base + x] += r1[x]
            s2[base + x] += r2[x]
        if y < hv:
            for x in range(wv):
                a = arg[x]
                if a < 0:
                    continue
                b = best[x]
                m = mip[y, x]
                if b > m:
                    mip[y, x] = b
                    index[y, x] = items[a]
                elif b == m and items[a] < index[y, x]:
                    index[y, x] = items[a]


def chunk_reduce(
    maps: Sequence[np.ndarray],
    scale: np.ndarray,
    items: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    mip: np.ndarray,
    index: np.ndarray,
) -> None:
    """Fold a chunk of maps into the batch sums and the stored maximum.

    Parameters
    ----------
    maps
        ``n >= 1`` float32 C-contiguous correlation maps `(H, W)` (not modified), as a
        sequence of 2D arrays or one `(n, H, W)` array.
    scale
        `(n,)` float32 factors applied to each map first (noise normalisation).
    items
        `(n,)` int64 global search index of each map, any order.
    s1, s2
        `(H * W,)` float32 batch sums of the scaled scores and their squares, added to (in
        ascending item order).
    mip, index
        `(hv, wv)` float32 / int64 stored maximum over the valid region (top-left corner of
        the maps) and its search index, updated in place: a larger score wins, on a tie the
        smaller index, NaN never (a pixel where every map is NaN is left as it was).
    """
    maps = list(maps)
    n = len(maps)
    if n == 0:
        raise ValueError("chunk_reduce needs at least one map")
    h, w = maps[0].shape
    hv, wv = mip.shape
    for m in maps:
        if m.shape != (h, w) or m.dtype != np.float32 or not m.flags.c_contiguous:
            raise ValueError("maps must be C-contiguous float32 arrays of one shape")
    outs = (s1, s2, mip, index)
    if (
        scale.shape != (n,) or items.shape != (n,) or hv > h or wv > w
        or s1.shape != (h * w,) or s2.shape != (h * w,) or index.shape != (hv, wv)
        or s1.dtype != np.float32 or s2.dtype != np.float32
        or mip.dtype != np.float32 or index.dtype != np.int64
        or not all(a.flags.c_contiguous and a.flags.writeable for a in outs)
    ):  # fmt: skip
        raise ValueError(
            "chunk_reduce: inconsistent shapes or dtypes, or outputs not writeable C-contiguous "
            "(the kernel has no bounds checks)"
        )
    order = np.argsort(items, kind="stable")
    scale = np.ascontiguousarray(scale[order], dtype=np.float32)
    items = np.ascontiguousarray(items[order], dtype=np.int64)
    maps = [maps[i] for i in order]
    for g0 in range(0, n, GROUP):
        group = maps[g0 : g0 + GROUP]
        m = len(group)
        group += [group[0]] * (GROUP - m)
        _reduce_group(tuple(group), m, scale[g0 : g0 + m], items[g0 : g0 + m], s1, s2, mip, index)
