"""Peak callers for 3D score maps, sub-voxel refinement and the false-positive cut-off.

Every caller returns peaks sorted by score (descending) after the same filters:
NaN removal, ``s >= min_score``,
greedy distance suppression (a peak is kept only if it is at least ``min_distance`` voxels,
Euclidean, from every higher kept peak), then peaks above ``max_score`` or within
``min_boundary_distance`` of a face are dropped (they still suppress their neighbourhood, so
their shoulders do not come back as peaks) and at most
``num_peaks`` peaks are returned.

=====================  ===================================================================
method                 candidate rule
=====================  ===================================================================
``"sort"``             the ``num_peaks (2 min_distance + 1)^3`` highest voxels (no
                       local-maximum test; distance suppression separates the peaks)
``"maximum_filter"``   voxels equal to the maximum of their ``min_distance``-wide cube
``"fast"``             the maximum of each ``min_distance`` grid cell, kept if it is also the
                       maximum within +-``min_distance``
``"recursive"``        take the best voxel, suppress a cube of half-width ``min_distance``
                       (or the rotated template mask > 0.1 around it), repeat
``"local_max"``        scikit-image ``peak_local_max``-like: maximum of the
                       ``2 min_distance + 1`` cube, border ``min_distance`` excluded
``"clustering"``       voxels above ``min_score`` linked within ``min_distance``
                       (single linkage); the maximum of each cluster
=====================  ===================================================================

pyTME-compatible classes (``PeakCallerSort`` ... ``PeakClustering``) wrap these with the
``(shape, num_peaks=1000, min_distance=1, min_boundary_distance=0, min_score=None,
max_score=None)`` constructor; unknown arguments raise ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy.spatial import cKDTree

from corrscan.core.peaks import gaussian_noise_zscore_cutoff, maximum_filter, parabolic_vertex
from corrscan.errors import InputError

__all__ = [
    "PEAK_METHODS",
    "PeakCaller",
    "PeakCallerFast",
    "PeakCallerMaximumFilter",
    "PeakCallerRecursiveMasking",
    "PeakCallerScipy",
    "PeakCallerSort",
    "PeakClustering",
    "call_peaks",
    "false_positive_cutoff",
    "subvoxel_refine",
]

PeakMethod = Literal["sort", "maximum_filter", "fast", "recursive", "local_max", "clustering"]
PEAK_METHODS: tuple[str, ...] = (
    "sort", "maximum_filter", "fast", "recursive", "local_max", "clustering",
)  # fmt: skip


def false_positive_cutoff(
    n_correlations: float, n_false_positives: float = 1.0, *, mean: float = 0.0, std: float = 1.0
) -> float:
    """Score above which ``n_false_positives`` noise maxima are expected (Rickgauer 2017).

    ``mean + std * sqrt(2) * erfcinv(2 n_fp / n_corr)`` for Gaussian scores with the given
    mean and standard deviation (from :class:`MatchResult` statistics).
    """
    if n_correlations <= 0 or not 0 < n_false_positives < n_correlations:
        raise InputError(
            f"need 0 < n_false_positives ({n_false_positives}) < n_correlations ({n_correlations})"
        )
    return float(mean + std * gaussian_noise_zscore_cutoff(n_correlations, n_false_positives))


def _suppress(coords: np.ndarray, scores: np.ndarray, min_distance: float, k: int) -> np.ndarray:
    """Indices (into sorted-desc ``coords``) kept by greedy distance suppression."""
    if len(coords) == 0:
        return np.zeros(0, dtype=np.int64)
    if min_distance <= 0:
        return np.arange(min(k, len(coords)))
    tree = cKDTree(coords)
    neigh = tree.query_ball_point(coords, r=min_distance - 1e-9)
    removed = np.zeros(len(coords), dtype=bool)
    kept = []
    for i in range(len(coords)):  # loop over candidates (few), never voxels
        if removed[i]:
            continue
        kept.append(i)
        if len(kept) >= k:
            break
        removed[neigh[i]] = True
    return np.asarray(kept, dtype=np.int64)


def _filter(
    coords: np.ndarray,
    scores: np.ndarray,
    shape: Sequence[int],
    *,
    min_boundary_distance: int,
    min_score: float | None,
    max_score: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(scores)
    if min_boundary_distance > 0:
        b = int(min_boundary_distance)
        keep &= np.all(coords >= b, axis=1) & np.all(coords < np.asarray(shape) - b, axis=1)
    if min_score is not None:
        keep &= scores >= min_score
    if max_score is not None:
        keep &= scores <= max_score
    coords, scores = coords[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    return coords[order], scores[order]


def _coords_of(flat: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    return np.stack(np.unravel_index(flat, tuple(shape)), axis=-1).astype(np.int64)


def _candidates(
    m: np.ndarray, method: str, *, num_peaks: int, min_distance: int, min_score: float | None
) -> np.ndarray:
    """Flat indices of candidate voxels."""
    finite = np.where(np.isfinite(m), m, -np.inf)
    if method == "sort":
        # enough top voxels to hold num_peaks separated maxima (a peak spans ~md^ndim voxels)
        k = min(num_peaks * max(2, (2 * int(min_distance) + 1) ** finite.ndim), finite.size)
        flat = torch.topk(torch.from_numpy(finite.ravel()), k).indices.numpy()
        return flat
    if method == "maximum_filter":
        size = max(int(min_distance), 1)
        mx = maximum_filter(finite, size=size)  # outside the map counts as -inf
        return np.flatnonzero((finite == mx) & np.isfinite(finite))
    if method == "local_max":
        # (skimage's edge-replicating filter: replicated edge voxels never change a maximum)
        mx = maximum_filter(finite, size=2 * int(min_distance) + 1)
        ok = (finite == mx) & np.isfinite(finite)
        if min_distance > 0:
            b = int(min_distance)
            border = np.zeros_like(ok)
            border[tuple(slice(b, s - b) for s in ok.shape)] = True
            ok &= border
        if min_score is not None:
            ok &= finite >= min_score
        return np.flatnonzero(ok)
    if method == "fast":
        step = max(int(min_distance), 1)
        pad = [(0, (-s) % step) for s in finite.shape]
        p = np.pad(finite, pad, constant_values=-np.inf)
        nd = finite.ndim
        cshape = tuple(v // step for v in p.shape)
        cells = p.reshape([v for c in cshape for v in (c, step)])
        cells = cells.transpose(*range(0, 2 * nd, 2), *range(1, 2 * nd, 2))
        arg = cells.reshape(*cshape, -1).argmax(axis=-1)
        local = np.stack(np.unravel_index(arg, (step,) * nd), axis=-1)
        grid = np.stack(np.meshgrid(*(np.arange(c) * step for c in cshape), indexing="ij"), -1)
        pos = (grid + local).reshape(-1, nd)
        inside = np.all(pos < np.asarray(finite.shape), axis=1)
        pos = pos[inside]
        mx = maximum_filter(finite, size=2 * step + 1)
        vals = finite[tuple(pos.T)]
        ok = (vals == mx[tuple(pos.T)]) & np.isfinite(vals)
        return np.ravel_multi_index(tuple(pos[ok].T), finite.shape)
    if method == "clustering":
        thr = (
            min_score
            if min_score is not None
            else np.nanmean(finite[np.isfinite(finite)])
            + (3.0 * np.nanstd(finite[np.isfinite(finite)]))
        )
        flat = np.flatnonzero(finite >= thr)
        if len(flat) == 0:
            return flat
        pts = _coords_of(flat, finite.shape).astype(np.float64)
        tree = cKDTree(pts)
        pairs = tree.query_pairs(r=max(float(min_distance), 1.0), output_type="ndarray")
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n = len(pts)
        adj = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        _, labels = connected_components(adj, directed=False)
        vals = finite.ravel()[flat]
        order = np.lexsort((-vals, labels))  # by label, then score desc
        first = np.ones(len(order), dtype=bool)
        first[1:] = labels[order][1:] != labels[order][:-1]
        return flat[order[first]]
    raise InputError(f"unknown peak method {method!r}: choose one of {', '.join(PEAK_METHODS)}")


def _recursive(
    m: np.ndarray,
    *,
    num_peaks: int,
    min_distance: int,
    min_score: float | None,
    max_score: float | None,
    min_boundary_distance: int,
    masks: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Recursive masking; ``masks(coord) -> (offset_start (3,), bool cube)`` optional."""
    work = np.where(np.isfinite(m), m, -np.inf).astype(np.float64)
    b = int(min_boundary_distance)
    upper = np.asarray(work.shape) - b
    coords, vals = [], []
    r = max(int(min_distance), 1)
    flat_work = work.ravel()
    while len(coords) < num_peaks:
        # top candidates at once; accept the best still valid (loop over accepted peaks)
        i = int(np.argmax(flat_work))
        v = flat_work[i]
        if not np.isfinite(v) or (min_score is not None and v < min_score):
            break
        c = np.array(np.unravel_index(i, work.shape))
        inside = b <= 0 or (np.all(c >= b) and np.all(c < upper))
        if inside and (max_score is None or v <= max_score):  # else suppress, do not report
            coords.append(c)
            vals.append(v)
        if masks is not None:
            start, cube = masks(c)
            sl = tuple(
                slice(max(s, 0), min(s + n, N))
                for s, n, N in zip(start, cube.shape, work.shape, strict=True)
            )
            csl = tuple(slice(a.start - s, a.stop - s) for a, s in zip(sl, start, strict=True))
            region = work[sl]
            region[cube[csl]] = -np.inf
            work[tuple(c)] = -np.inf
        else:
            sl = tuple(slice(max(x - r, 0), x + r + 1) for x in c)
            work[sl] = -np.inf
    if not coords:
        return np.zeros((0, m.ndim), dtype=np.int64), np.zeros(0)
    return np.asarray(coords, dtype=np.int64), np.asarray(vals)


def call_peaks(
    score_map: Any,
    *,
    method: str = "maximum_filter",
    num_peaks: int = 1000,
    min_distance: int = 5,
    min_boundary_distance: int = 0,
    min_score: float | None = None,
    max_score: float | None = None,
    mask_fn: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of a score map.

    Parameters
    ----------
    score_map
        ``(D, H, W)`` (or 2D) scores.
    method
        One of :data:`PEAK_METHODS`.
    num_peaks, min_distance, min_boundary_distance, min_score, max_score
        See the module docstring (distances in voxels).
    mask_fn
        ``"recursive"`` only: ``coord -> (start (ndim,), bool cube)`` region to suppress
        around an accepted peak (e.g. the rotated template mask); default a cube.

    Returns
    -------
    coords, scores
        ``(n, ndim)`` int64 voxel indices and ``(n,)`` scores, by score descending.
    """
    if num_peaks <= 0:
        raise InputError(f"num_peaks must be > 0, got {num_peaks}")
    if min_distance < 0:
        raise InputError(f"min_distance must be >= 0, got {min_distance}")
    m = np.asarray(
        score_map.detach().cpu() if isinstance(score_map, torch.Tensor) else score_map,
        dtype=np.float64,
    )
    if method == "recursive":
        return _recursive(
            m, num_peaks=num_peaks, min_distance=min_distance, min_score=min_score,
            max_score=max_score, min_boundary_distance=min_boundary_distance, masks=mask_fn,
        )  # fmt: skip
    flat = _candidates(
        m, method, num_peaks=num_peaks, min_distance=min_distance, min_score=min_score
    )
    coords = _coords_of(flat, m.shape)
    vals = m.ravel()[flat]
    coords, vals = _filter(
        coords, vals, m.shape, min_boundary_distance=0, min_score=min_score, max_score=None
    )
    # peaks above max_score or near the border are dropped after suppression, so they still
    # suppress their neighbourhood (their shoulders do not come back as peaks)
    bad = np.zeros(len(vals), dtype=bool)
    if max_score is not None:
        bad |= vals > max_score
    if min_boundary_distance > 0:
        b = int(min_boundary_distance)
        bad |= ~(np.all(coords >= b, axis=1) & np.all(coords < np.asarray(m.shape) - b, axis=1))
    keep = _suppress(
        coords.astype(np.float64), vals, float(min_distance), num_peaks + int(bad.sum())
    )
    keep = keep[~bad[keep]]
    return coords[keep][:num_peaks], vals[keep][:num_peaks]


def subvoxel_refine(score_map: Any, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis parabolic vertex fit around integer peaks.

    Returns float ``(n, ndim)`` positions (offsets clamped to +-0.5; edges keep 0) and the
    fitted heights (the maximum of the per-axis parabola heights, each the parabola's value
    at the clamped offset); per axis :func:`corrscan.core.peaks.parabolic_vertex`.
    """
    m = np.asarray(
        score_map.detach().cpu() if isinstance(score_map, torch.Tensor) else score_map,
        dtype=np.float64,
    )
    c = np.asarray(coords, dtype=np.int64).reshape(-1, m.ndim)
    out = c.astype(np.float64)
    y0 = m[tuple(c.T)] if len(c) else np.zeros(0)
    heights = y0.copy()
    for ax in range(m.ndim):
        ok = (c[:, ax] > 0) & (c[:, ax] < m.shape[ax] - 1)
        cm, cp = c.copy(), c.copy()
        cm[:, ax] = np.clip(c[:, ax] - 1, 0, m.shape[ax] - 1)
        cp[:, ax] = np.clip(c[:, ax] + 1, 0, m.shape[ax] - 1)
        ym, yp = m[tuple(cm.T)], m[tuple(cp.T)]
        # offset clamped to +-0.5 (0 where the curvature is >= 0) and the parabola's height
        off, h = parabolic_vertex(ym, y0, yp)
        out[:, ax] += np.where(ok, np.nan_to_num(off), 0.0)
        heights = np.maximum(heights, np.where(ok, h, y0))
    return out, heights


# ---------------------------------------------------------------------- compat classes
class PeakCaller:
    """Collects peaks of score maps (pyTME-compatible base; use a subclass).

    State: ``translations (k, ndim)``, ``rotations (k, 3, 3)``, ``scores (k,)``,
    ``details (k,)``; iterating yields these four arrays.
    """

    method: str = ""

    def __init__(
        self,
        shape: Sequence[int],
        num_peaks: int = 1000,
        min_distance: int = 1,
        min_boundary_distance: int = 0,
        min_score: float | None = None,
        max_score: float | None = None,
    ) -> None:
        if type(self) is PeakCaller:
            raise TypeError("PeakCaller is abstract: use PeakCallerMaximumFilter etc.")
        if num_peaks <= 0:
            raise ValueError(f"num_peaks must be > 0, got {num_peaks}")
        if min_distance < 0:
            raise ValueError(f"min_distance must be >= 0, got {min_distance}")
        self.shape = tuple(int(s) for s in shape)
        self.num_peaks = int(num_peaks)
        self.min_distance = int(min_distance)
        self.min_boundary_distance = int(min_boundary_distance)
        self.min_score = min_score
        self.max_score = max_score
        nd = len(self.shape)
        self.translations = np.zeros((0, nd), dtype=np.int64)
        self.rotations = np.zeros((0, 3, 3), dtype=np.float32)
        self.scores = np.zeros(0, dtype=np.float64)
        self.details = np.zeros(0, dtype=np.float64)

    def _call(self, scores: np.ndarray, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        return call_peaks(
            scores, method=self.method, num_peaks=self.num_peaks, min_distance=self.min_distance,
            min_boundary_distance=self.min_boundary_distance, min_score=self.min_score,
            max_score=self.max_score, **kw,
        )  # fmt: skip

    def __call__(
        self,
        scores: Any,
        rotation_matrix: Any = None,
        rotations: np.ndarray | None = None,
        rotation_mapping: dict[int, np.ndarray] | None = None,
    ) -> None:
        """Add the peaks of ``scores``; their rotation is ``rotation_matrix`` or read from a
        rotation-index map ``rotations`` through ``rotation_mapping``."""
        s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores)
        coords, vals = self._call(s, **self._extra(rotations, rotation_mapping))
        if rotation_matrix is not None:
            rm = np.broadcast_to(np.asarray(rotation_matrix, dtype=np.float32), (len(vals), 3, 3))
        elif rotations is not None and rotation_mapping is not None:
            idx = np.asarray(rotations)[tuple(coords.T)]
            rm = (
                np.stack(
                    [np.asarray(rotation_mapping.get(int(i), np.eye(3)), np.float32) for i in idx]
                )
                if len(idx)
                else np.zeros((0, 3, 3), np.float32)
            )
        else:
            rm = np.broadcast_to(np.eye(3, dtype=np.float32), (len(vals), 3, 3))
        self._add(coords, np.asarray(rm), vals, np.full(len(vals), -1.0))

    def _extra(self, rotations: Any, mapping: Any) -> dict[str, Any]:
        return {}

    def _add(self, t: np.ndarray, r: np.ndarray, s: np.ndarray, d: np.ndarray) -> None:
        t = np.concatenate([self.translations, t])
        r = np.concatenate([self.rotations, r])
        s = np.concatenate([self.scores, s])
        d = np.concatenate([self.details, d])
        order = np.argsort(-s, kind="stable")
        keep = order[
            _suppress(t[order].astype(np.float64), s[order], self.min_distance, self.num_peaks)
        ]
        self.translations, self.rotations = t[keep], r[keep]
        self.scores, self.details = s[keep], d[keep]

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.translations.copy()
        yield self.rotations.copy()
        yield self.scores.copy()
        yield self.details.copy()

    @classmethod
    def merge(cls, param_stores: Iterable[Any], **kwargs: Any) -> PeakCaller:
        """Re-run distance suppression over the peaks of several callers/results."""
        stores = list(param_stores)
        if not stores:
            raise InputError("merge needs at least one result")
        first = stores[0]
        shape = kwargs.pop("shape", getattr(first, "shape", None))
        out = cls(shape, **kwargs) if kwargs else cls(
            shape, num_peaks=first.num_peaks, min_distance=first.min_distance,
            min_boundary_distance=first.min_boundary_distance, min_score=first.min_score,
            max_score=first.max_score,
        )  # fmt: skip
        for st in stores:
            t, r, s, d = (np.asarray(x) for x in st)
            out._add(t.astype(np.int64), r.astype(np.float32), s.astype(np.float64), d)
        return out


class PeakCallerSort(PeakCaller):
    """Top-k voxels (partial sort), then distance suppression."""

    method = "sort"


class PeakCallerMaximumFilter(PeakCaller):
    """Voxels equal to the maximum filter of width ``min_distance`` (pyTME postprocess default)."""

    method = "maximum_filter"


class PeakCallerFast(PeakCaller):
    """Maximum per ``min_distance`` grid cell, kept if also the maximum within +-min_distance."""

    method = "fast"


class PeakCallerScipy(PeakCaller):
    """scikit-image ``peak_local_max``-like local maxima (own implementation, no skimage)."""

    method = "local_max"


class PeakClustering(PeakCaller):
    """Maximum of each single-linkage cluster (radius ``min_distance``) of voxels >= min_score."""

    method = "clustering"


class PeakCallerRecursiveMasking(PeakCaller):
    """Accept the best voxel, suppress around it, repeat.

    With ``mask`` (template mask), ``rotations`` (index map) and ``rotation_mapping`` in the
    call, the suppressed region is the template mask rotated to the peak's orientation
    (trilinear, > 0.1), centred on the peak; otherwise a cube of half-width ``min_distance``.
    """

    method = "recursive"

    def __init__(self, *args: Any, mask: np.ndarray | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mask = None if mask is None else np.asarray(mask, dtype=np.float32)

    def _extra(self, rotations: Any, mapping: Any) -> dict[str, Any]:
        if self.mask is None or rotations is None or mapping is None:
            return {}
        from corrscan.match3d.rotate import TemplateRotator

        rot = TemplateRotator(torch.from_numpy(self.mask), order=1)
        centre = np.array([s // 2 for s in self.mask.shape])
        rmap = np.asarray(rotations)

        def mask_fn(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            mat = np.asarray(mapping.get(int(rmap[tuple(c)]), np.eye(3)), dtype=np.float32)
            cube = rot(torch.from_numpy(mat)[None])[0].numpy() > 0.1
            return c - centre, cube

        return {"mask_fn": mask_fn}
