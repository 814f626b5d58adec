"""Compiled CPU kernel of the 2D search's per-chunk update (numba, GIL released).

:func:`chunk_reduce` reads a chunk of correlation maps once and does everything the search
needs from them: the noise normalisation, the per-pixel batch sums of the scores and of their
squares (for the correlation mean and variance), and the chunk's per-pixel maximum with the
winning search index over the valid region, plus the list of pixels where that maximum reaches
the stored one (the only pixels :meth:`corrscan.core.stats.MaxAccumulator.update_reduced` has
to touch). The torch form of the same update takes about six passes over the chunk.
"""

from __future__ import annotations

import numpy as np

from corrscan.core.jit import AVAILABLE, njit

__all__ = ["AVAILABLE", "chunk_reduce"]


#: fast-math without ``nnan``/``ninf``: comparisons with NaN and -inf keep IEEE semantics
_SAFE_FASTMATH = {"reassoc", "contract", "arcp", "nsz", "afn"}


@njit(nogil=True, fastmath=_SAFE_FASTMATH, cache=True)
def _chunk_reduce(
    maps, scale, items, stored, s1, s2, best_out, arg_out, cand_out
):  # pragma: no cover - compiled
    n, h, w = maps.shape
    hv, wv = stored.shape
    best = np.empty(w, np.float32)
    arg = np.empty(w, np.int64)
    r1 = np.empty(w, np.float32)
    r2 = np.empty(w, np.float32)
    n_cand = 0
    for y in range(h):
        for x in range(w):
            best[x] = -np.inf
            arg[x] = -1
            r1[x] = 0.0
            r2[x] = 0.0
        for i in range(n):
            row = maps[i, y]
            sc = scale[i]
            it = items[i]
            for x in range(w):
                v = row[x] * sc
                r1[x] += v
                r2[x] += v * v
                b = best[x]
                a = arg[x]
                take = (v > b) | ((v == b) & (it < a))  # branch-free (vectorised)
                best[x] = v if take else b
                arg[x] = it if take else a
        base = y * w
        for x in range(w):
            s1[base + x] += r1[x]
            s2[base + x] += r2[x]
        if y < hv:
            for x in range(wv):
                best_out[y, x] = best[x]
                arg_out[y, x] = arg[x]
                if best[x] >= stored[y, x]:
                    cand_out[n_cand] = y * wv + x
                    n_cand += 1
    return n_cand


def chunk_reduce(
    maps: np.ndarray,
    scale: np.ndarray,
    items: np.ndarray,
    stored: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    best: np.ndarray,
    arg: np.ndarray,
    candidates: np.ndarray,
) -> int:
    """Fold a chunk of maps into the batch sums and reduce it over its items.

    Parameters
    ----------
    maps
        `(n, H, W)` float32 C-contiguous correlation maps (not modified).
    scale
        `(n,)` float32 factors applied to each map first (noise normalisation).
    items
        `(n,)` int64 global search index of each map (ties: the smaller index wins).
    stored
        `(hv, wv)` float32 stored maximum of the valid region (read only).
    s1, s2
        `(H * W,)` float32 batch sums of the scaled scores and their squares, added to.
    best, arg
        `(hv, wv)` float32 / int64 outputs: the chunk maximum over the valid region (top-left
        corner of the maps) and its search index.
    candidates
        `(hv * wv,)` int64 output: flat valid-region indices where ``best >= stored``.

    Returns
    -------
    int
        Number of candidates written.
    """
    return int(_chunk_reduce(maps, scale, items, stored, s1, s2, best, arg, candidates))
