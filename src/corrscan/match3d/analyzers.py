"""Analyzers: what a 3D search keeps from each rotation's score map.

Compatibility surface of pyTME's analyzers with the **0.2.x constructor** (see
the peer spec ``shared/peers/pytme.md`` §5), implemented from the spec:

* :class:`MaxScoreOverRotations` keeps, per voxel, the best score over rotations and the index
  of the rotation that gave it, plus exact score statistics (count, sum, sum of squares per
  rotation) over exactly the region it reports, for false-positive cut-offs.
* :class:`MaxScoreOverTranslations` keeps the best score of each rotation over positions.
* :class:`MaxScoreOverRotationsConstrained` only accepts positions near seed points and
  orientations inside a cone around each seed's orientation.

Semantics (tested in ``tests/match3d/test_analyzers.py``):

* The score map starts at ``score_threshold`` (default 0, pyTME 0.2.x behaviour; pass
  ``float("-inf")`` to keep every maximum) and the rotation map at ``-1``. A voxel changes only
  where a new score is **strictly greater**, so ties keep the earlier rotation and scores at or
  below the threshold never enter.
* Rotation indices are the order in which distinct matrices were first seen (or the indices
  given by the caller with :meth:`MaxScoreOverRotations.update`); ``rotation_mapping`` maps an
  index to its ``3 x 3`` matrix.
* Iterating an analyzer yields ``(scores, offset, rotations, rotation_mapping)`` as NumPy
  arrays. ``merge`` writes several results into one map at their offsets; on equal scores the
  lower merged rotation index wins, so merging is independent of the order of the inputs and
  equals the one-shot search when the inputs cover its rotations.
* Unknown constructor arguments raise ``TypeError`` (no ``**kwargs``).
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from corrscan.core.arrays import as_numpy
from corrscan.errors import InputError
from corrscan.match3d import kernels

__all__ = [
    "MaxScoreOverRotations",
    "MaxScoreOverRotationsConstrained",
    "MaxScoreOverTranslations",
]


def _key(matrix: np.ndarray) -> bytes:
    return np.ascontiguousarray(np.asarray(matrix, dtype=np.float32).reshape(3, 3)).tobytes()


def _as_tensor(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if dtype is None else x.to(dtype)
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t if dtype is None else t.to(dtype)


def _alloc(shape: tuple[int, ...], dtype: np.dtype, fill: float, handler: Any, memmap: bool):
    """Allocate a NumPy state array: shared memory, a memmap in $TMPDIR, or plain memory."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    keep = None
    if handler is not None:
        shm = handler.SharedMemory(size=max(nbytes, 1))
        arr = np.ndarray(shape, dtype=dtype, buffer=shm.buf)
        keep = shm
    elif memmap:
        fd, path = tempfile.mkstemp(prefix="corrscan-match3d-", suffix=".dat")
        os.close(fd)
        arr = np.memmap(path, dtype=dtype, mode="w+", shape=shape)
        keep = path
    else:
        arr = np.empty(shape, dtype=dtype)
    arr[...] = fill
    return arr, keep


class MaxScoreOverRotations:
    """Per-voxel maximum score over rotations and the index of the best rotation.

    Parameters
    ----------
    shape
        Shape of the score maps this analyzer receives, ``(D, H, W)`` (any ndim works).
    scores, rotations
        Optional initial maps (e.g. to resume); copied. Default: ``score_threshold`` and -1.
    offset
        Position of this map's first voxel in the full target, ``(ndim,)`` ints (splits).
    score_threshold
        Initial value of the score map; only strictly greater scores are recorded.
    shared_memory_handler
        A started ``multiprocessing.managers.SharedMemoryManager`` (or anything with a
        ``SharedMemory(size=)`` method): state maps are put in shared memory.
    use_memmap
        Keep the maps as ``np.memmap`` files in ``$TMPDIR`` (large targets).
    thread_safe
        Serialise updates with a lock (several threads updating one analyzer).
    only_unique_rotations
        When iterating or merging, renumber the rotations so that only those that occur in
        the map are listed (indices ``0..k-1`` in order of first occurrence).
    """

    def __init__(
        self,
        shape: Sequence[int],
        scores: np.ndarray | None = None,
        rotations: np.ndarray | None = None,
        offset: Sequence[int] | None = None,
        score_threshold: float = 0.0,
        shared_memory_handler: Any = None,
        use_memmap: bool = False,
        thread_safe: bool = True,
        only_unique_rotations: bool = False,
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        if any(s < 1 for s in self.shape):
            raise InputError(f"analyzer shape must be positive, got {self.shape}")
        self.offset = (
            np.zeros(len(self.shape), dtype=np.int64)
            if offset is None
            else (np.asarray(offset, dtype=np.int64).reshape(-1))
        )
        if self.offset.shape != (len(self.shape),):
            raise InputError(f"offset {tuple(self.offset)} does not match shape {self.shape}")
        self.score_threshold = float(score_threshold)
        self.use_memmap = bool(use_memmap)
        self.thread_safe = bool(thread_safe)
        self.only_unique_rotations = bool(only_unique_rotations)
        self._lock = threading.Lock() if thread_safe else None
        s_np, self._keep_s = _alloc(
            self.shape, np.float32, self.score_threshold, shared_memory_handler, use_memmap
        )
        r_np, self._keep_r = _alloc(self.shape, np.int32, -1, shared_memory_handler, use_memmap)
        if scores is not None:
            s_np[...] = np.asarray(scores, dtype=np.float32).reshape(self.shape)
        if rotations is not None:
            r_np[...] = np.asarray(rotations, dtype=np.int32).reshape(self.shape)
        self._scores_np, self._rotations_np = s_np, r_np
        self._scores = torch.from_numpy(np.asarray(s_np))
        self._rotations = torch.from_numpy(np.asarray(r_np))
        self._keys: dict[bytes, int] = {}
        self._matrices: dict[int, np.ndarray] = {}
        # exact per-rotation statistics over the reported region: index -> [sum, sumsq, count]
        self._stats: dict[int, list[float]] = {}
        self._take: torch.Tensor | None = None
        #: one compiled pass per update on CPU (:func:`corrscan.match3d.kernels.max_update`)
        #: instead of ~6 torch passes; set by ``match_template`` (needs numba)
        self.fused = False
        #: threads the compiled update splits the volume between (z-slabs)
        self.kernel_threads = 1
        #: compiled path: batches arrive in descending rotation order (a search thread
        #: working from the end of its range), so equal scores go to the new, smaller index
        self.ties_to_new = False

    # ------------------------------------------------------------------ updates
    def _register(self, matrix: np.ndarray) -> int:
        key = _key(matrix)
        idx = self._keys.get(key)
        if idx is None:
            idx = len(self._matrices)
            while idx in self._matrices:
                idx += 1
            self._keys[key] = idx
            self._matrices[idx] = np.frombuffer(key, dtype=np.float32).reshape(3, 3).copy()
        return idx

    def __call__(self, scores: Any, rotation_matrix: Any) -> None:
        """Add one score map ``(*shape)`` for ``rotation_matrix`` ``(3, 3)``.

        A batch ``(B, *shape)`` with ``(B, 3, 3)`` matrices is accepted too.
        """
        s = _as_tensor(scores)
        r = np.asarray(
            rotation_matrix.detach().cpu()
            if isinstance(rotation_matrix, torch.Tensor)
            else rotation_matrix,
            dtype=np.float32,
        )
        if s.shape == self.shape:
            s, r = s[None], r.reshape(1, 3, 3)
        if tuple(s.shape[1:]) != self.shape or r.shape != (s.shape[0], 3, 3):
            raise InputError(
                f"scores {tuple(s.shape)} / rotations {r.shape} do not match analyzer "
                f"shape {self.shape}"
            )
        if self._lock is not None:
            with self._lock:
                idx = [self._register(m) for m in r]
        else:
            idx = [self._register(m) for m in r]
        self.update(s, torch.tensor(idx, dtype=torch.int32))

    def update(
        self,
        scores: torch.Tensor,
        indices: torch.Tensor,
        matrices: torch.Tensor | np.ndarray | None = None,
        scale: torch.Tensor | None = None,
    ) -> None:
        """Batched update with caller-given rotation indices (the fast path of the search).

        Parameters
        ----------
        scores
            ``(B, *shape)`` float32 scores (may be a strided view).
        indices
            ``(B,)`` integer rotation indices (ascending within a search, so ties keep the
            earlier rotation).
        matrices
            ``(B, 3, 3)`` matrices to record in ``rotation_mapping`` (optional if registered).
        scale
            Optional ``(*shape)`` factor applied to every score map first (the local
            normalisation of FLCSphericalMask, fused into the update). ``scores`` may be
            overwritten.
        """
        if matrices is not None:
            mats = np.asarray(
                matrices.detach().cpu() if isinstance(matrices, torch.Tensor) else matrices,
                dtype=np.float32,
            ).reshape(-1, 3, 3)
            for i, m in zip(indices.tolist(), mats, strict=True):
                if i not in self._matrices:
                    self._matrices[i] = m.copy()
                    self._keys[_key(m)] = i
        if self._lock is not None:
            with self._lock:
                self._update(scores, indices, scale)
        else:
            self._update(scores, indices, scale)

    def _update(
        self, scores: torch.Tensor, indices: torch.Tensor, scale: torch.Tensor | None = None
    ) -> None:
        b = scores.shape[0]
        n = math.prod(self.shape)
        if self.fused and kernels.AVAILABLE and scores.device.type == "cpu":
            # compiled loops do not check bounds: validate shapes here
            if tuple(scores.shape[1:]) != self.shape:
                raise InputError(
                    f"scores {tuple(scores.shape)} do not match analyzer shape {self.shape}"
                )
            if scale is not None and tuple(scale.shape) != self.shape:
                scale = scale.to(torch.float32).expand(self.shape).contiguous()
            # one compiled pass (GIL released): scale, max/arg-max, per-map statistics
            stats = kernels.max_update(
                scores.detach().numpy(),
                indices.tolist(),
                self._scores.numpy(),
                self._rotations.numpy(),
                None if scale is None else scale.numpy(),
                threads=self.kernel_threads,
                ties_to_new=self.ties_to_new,
            )
            for i, (s1, s2) in zip(indices.tolist(), stats.tolist(), strict=True):
                st = self._stats.setdefault(int(i), [0.0, 0.0, 0])
                st[0] += s1
                st[1] += s2
                st[2] += n
            return
        if scale is not None:
            scores = scores.mul_(scale)
        dims = tuple(range(1, scores.ndim))
        # float32 passes (float64 conversions cost ~10x more on CPU); summed in float64 below
        sums = torch.sum(scores, dim=dims).double().tolist()
        sqs = (torch.linalg.vector_norm(scores, dim=dims).double() ** 2).tolist()
        for i, s1, s2 in zip(indices.tolist(), sums, sqs, strict=True):
            st = self._stats.setdefault(int(i), [0.0, 0.0, 0])
            st[0] += s1
            st[1] += s2
            st[2] += n
        cur, rot = self._scores, self._rotations
        if self._take is None:
            self._take = torch.empty(self.shape, dtype=torch.bool, device=self._scores.device)
        # NaN scores never enter the map (as in the compiled update; inputs are checked finite)
        if b == 1:
            best = scores[0]
            take = torch.gt(best, cur, out=self._take)
            torch.where(take, best, cur, out=cur)
            rot.masked_fill_(take, int(indices[0]))
            return
        best, arg = torch.max(scores, dim=0)  # first maximum = earliest batch item
        take = torch.gt(best, cur, out=self._take)
        torch.where(take, best, cur, out=cur)
        idx = indices.to(device=arg.device, dtype=torch.int32)[arg]
        torch.where(take, idx, rot, out=rot)

    # ------------------------------------------------------------------ results
    @property
    def scores(self) -> np.ndarray:
        """Current maximum-score map ``(*shape)`` float32."""
        return self._scores.cpu().numpy()

    @property
    def rotations(self) -> np.ndarray:
        """Current rotation-index map ``(*shape)`` int32 (-1 where nothing was recorded)."""
        return self._rotations.cpu().numpy()

    def to(self, device: str | torch.device) -> MaxScoreOverRotations:
        """Keep the state maps on ``device`` (e.g. the GPU of the search); returns self.

        Shared-memory and memmap storage stay on the host (``ValueError`` otherwise).
        """
        dev = torch.device(device)
        if dev.type != "cpu" and (self._keep_s is not None or self._keep_r is not None):
            raise InputError("shared-memory / memmap analyzer state cannot move to a GPU")
        self._scores = self._scores.to(dev)
        self._rotations = self._rotations.to(dev)
        self._take = None
        return self

    @property
    def rotation_mapping(self) -> dict[int, np.ndarray]:
        """``{index: (3, 3) float32 matrix}`` of every rotation seen."""
        return dict(sorted(self._matrices.items()))

    @property
    def n_rotations(self) -> int:
        """Number of distinct rotations that updated this analyzer."""
        return len(self._stats)

    @property
    def score_count(self) -> int:
        """Number of scores seen (voxels x rotations)."""
        return int(sum(v[2] for v in self._stats.values()))

    def _totals(self) -> tuple[float, float, int]:
        s1 = s2 = 0.0
        n = 0
        for k in sorted(self._stats):  # fixed order -> bitwise reproducible totals
            a, b, c = self._stats[k]
            s1 += a
            s2 += b
            n += c
        return s1, s2, n

    @property
    def score_mean(self) -> float:
        """Mean of every score seen (over voxels and rotations)."""
        s1, _, n = self._totals()
        return s1 / n if n else math.nan

    @property
    def score_std(self) -> float:
        """Population standard deviation of every score seen."""
        s1, s2, n = self._totals()
        if not n:
            return math.nan
        m = s1 / n
        return math.sqrt(max(s2 / n - m * m, 0.0))

    @property
    def score_rms(self) -> float:
        """``sqrt(sum s^2 / n)`` (pyTME's ``ssum`` statistic, over the reported region)."""
        _, s2, n = self._totals()
        return math.sqrt(s2 / n) if n else math.nan

    @property
    def rotation_statistics(self) -> dict[int, tuple[float, float, int]]:
        """``{index: (sum, sum of squares, count)}`` per rotation (exactly mergeable)."""
        return {k: tuple(v) for k, v in sorted(self._stats.items())}  # type: ignore[misc]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Complete state as plain tensors (CPU copies), for :meth:`from_state_dict`.

        Returns
        -------
        dict
            ``shape``, ``offset``, ``score_threshold``; ``scores`` ``(*shape)`` float32,
            ``rotations`` ``(*shape)`` int32; ``matrix_index`` ``(k,)`` int64 and
            ``matrices`` ``(k, 3, 3)`` float32 (``rotation_mapping``); ``stats_index``
            ``(m,)`` int64, ``stats`` ``(m, 2)`` float64 (sum, sum of squares) and ``counts``
            ``(m,)`` int64 (``rotation_statistics``). Round trips bit for bit.
        """
        mapping = self.rotation_mapping
        stats = self.rotation_statistics
        return {
            "shape": list(self.shape),
            "offset": [int(v) for v in self.offset],
            "score_threshold": self.score_threshold,
            "scores": torch.from_numpy(self.scores.copy()),
            "rotations": torch.from_numpy(self.rotations.copy()),
            "matrix_index": torch.tensor(list(mapping), dtype=torch.int64),
            "matrices": torch.from_numpy(
                np.stack(list(mapping.values())).astype(np.float32)
                if mapping
                else np.zeros((0, 3, 3), dtype=np.float32)
            ),
            "stats_index": torch.tensor(list(stats), dtype=torch.int64),
            "stats": torch.tensor(
                [[v[0], v[1]] for v in stats.values()], dtype=torch.float64
            ).reshape(-1, 2),
            "counts": torch.tensor([int(v[2]) for v in stats.values()], dtype=torch.int64),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], **kwargs: Any) -> MaxScoreOverRotations:
        """Analyzer from a :meth:`state_dict` (maps, rotation table, per-rotation statistics).

        ``state`` needs ``scores`` and ``rotations`` ``(*shape)``; ``offset``,
        ``score_threshold``, ``matrix_index`` + ``matrices`` and ``stats_index`` + ``stats``
        + ``counts`` are optional. ``kwargs`` go to the constructor (e.g. ``thread_safe``,
        or a subclass's own arguments); ``offset`` / ``score_threshold`` there override the
        state's.
        """
        scores = np.asarray(as_numpy(state["scores"]), dtype=np.float32)
        rotations = np.asarray(as_numpy(state["rotations"]), dtype=np.int32)
        if scores.shape != rotations.shape:
            raise InputError(
                f"state scores {scores.shape} and rotations {rotations.shape} differ in shape"
            )
        kwargs.setdefault("offset", state.get("offset"))
        kwargs.setdefault("score_threshold", float(state.get("score_threshold", 0.0)))
        out = cls(scores.shape, **kwargs)
        out._scores.copy_(torch.from_numpy(scores))  # (shares memory with the storage maps)
        out._rotations.copy_(torch.from_numpy(rotations))
        idx = np.asarray(as_numpy(state.get("matrix_index", np.zeros(0))), dtype=np.int64)
        mats = np.asarray(
            as_numpy(state.get("matrices", np.zeros((0, 3, 3)))), dtype=np.float32
        ).reshape(-1, 3, 3)
        if idx.shape != (len(mats),):
            raise InputError(f"state has {idx.size} matrix indices for {len(mats)} matrices")
        for i, m in zip(idx.tolist(), mats, strict=True):
            out._matrices[int(i)] = m.copy()
            out._keys.setdefault(_key(m), int(i))
        sidx = np.asarray(as_numpy(state.get("stats_index", np.zeros(0))), dtype=np.int64)
        sums = np.asarray(as_numpy(state.get("stats", np.zeros((0, 2)))), dtype=np.float64)
        counts = np.asarray(as_numpy(state.get("counts", np.zeros(0))), dtype=np.int64)
        sums = sums.reshape(-1, 2)
        if not sidx.shape == counts.shape == (len(sums),):
            raise InputError("state statistics: stats_index, stats and counts differ in length")
        for i, (s1, s2), n in zip(sidx.tolist(), sums.tolist(), counts.tolist(), strict=True):
            out._stats[int(i)] = [s1, s2, int(n)]
        return out

    def _unique(self) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        rot = self.rotations
        mapping = self.rotation_mapping
        if not self.only_unique_rotations:
            return rot.copy(), mapping
        used = np.unique(rot[rot >= 0])
        lut = np.full(max(mapping, default=-1) + 2, -1, dtype=np.int32)
        lut[used] = np.arange(len(used), dtype=np.int32)
        return lut[rot], {i: mapping[int(u)] for i, u in enumerate(used)}

    def __iter__(self) -> Iterator[Any]:
        """Yield ``scores, offset, rotations, rotation_mapping`` (NumPy copies)."""
        rot, mapping = self._unique()
        yield self.scores.copy()
        yield self.offset.copy()
        yield rot
        yield mapping

    def __len__(self) -> int:
        return 4

    # ------------------------------------------------------------------ merging
    @classmethod
    def merge(
        cls,
        param_stores: Iterable[Any],
        output_shape: Sequence[int] | None = None,
        score_threshold: float | None = None,
        use_memmap: bool = False,
        only_unique_rotations: bool = False,
    ) -> MaxScoreOverRotations:
        """Combine results of target splits and rotation chunks into one analyzer.

        Parameters
        ----------
        param_stores
            Analyzers, or ``(scores, offset, rotations, rotation_mapping)`` tuples.
        output_shape
            Shape of the merged map; default ``max(offset + shape)`` over the inputs.
        score_threshold
            Initial value of the merged map (default: the analyzers' lowest threshold; -inf
            when only tuples are given).

        Returns
        -------
        MaxScoreOverRotations
            At offset 0. Rotation indices are renumbered into one table (matrices compared
            bitwise as float32, numbered in input order); on equal scores the lower index wins.
            Per-rotation statistics are added.
        """
        items = []
        thresholds = []
        for p in param_stores:
            if isinstance(p, MaxScoreOverRotations):
                scores, offset, rot, mapping = p.scores, p.offset, p.rotations, p.rotation_mapping
                stats = p._stats
                thresholds.append(p.score_threshold)
            else:
                scores, offset, rot, mapping = p[:4]
                stats = {}
            items.append(
                (
                    np.asarray(scores),
                    np.asarray(offset, dtype=np.int64),
                    np.asarray(rot),
                    mapping,
                    stats,
                )
            )
        if not items:
            raise InputError("merge needs at least one result")
        ndim = items[0][0].ndim
        if output_shape is None:
            output_shape = np.max([o + np.array(s.shape) for s, o, *_ in items], axis=0)
        output_shape = tuple(int(v) for v in output_shape)
        if score_threshold is None:
            score_threshold = min(thresholds) if thresholds else -math.inf
        out = cls(
            output_shape,
            offset=np.zeros(ndim, dtype=np.int64),
            score_threshold=score_threshold,
            use_memmap=use_memmap,
            thread_safe=False,
            only_unique_rotations=only_unique_rotations,
        )
        cur, cur_rot = out._scores, out._rotations
        for scores, offset, rot, mapping, stats in items:
            if np.any(offset < 0) or np.any(offset + np.array(scores.shape) > output_shape):
                raise InputError(
                    f"result at offset {tuple(offset)} with shape {scores.shape} does not fit "
                    f"in output shape {output_shape}"
                )
            lut = np.full(max(mapping, default=-1) + 2, -1, dtype=np.int32)
            for i, m in sorted(mapping.items()):  # index order, whatever the update order
                lut[int(i)] = out._register(m)
            new_rot = torch.from_numpy(lut[rot.astype(np.int64)])
            new_s = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
            region = tuple(
                slice(int(o), int(o) + n) for o, n in zip(offset, scores.shape, strict=True)
            )
            c, cr = cur[region], cur_rot[region]
            valid = new_rot >= 0
            take = (new_s > c) | ((new_s == c) & valid & ((new_rot < cr) | (cr < 0)))
            take &= valid | (new_s > c)
            c.copy_(torch.where(take, new_s, c))
            cr.copy_(torch.where(take, new_rot, cr))
            for i, (s1, s2, n) in stats.items():
                if int(i) not in mapping:
                    raise InputError(f"statistics for rotation {i} without its matrix")
                j = int(lut[int(i)])
                st = out._stats.setdefault(j, [0.0, 0.0, 0])
                st[0] += s1
                st[1] += s2
                st[2] += n
        return out


class MaxScoreOverTranslations:
    """Best score of each rotation over positions (``(n_rotations, ...)`` output).

    Parameters
    ----------
    shape
        Shape of the score maps received.
    n_rotations
        Number of rotations (rows of the output).
    aggregate_axis
        Axes of the score map to take the maximum over; default all (output
        ``(n_rotations,)``); e.g. ``(0,)`` keeps a ``(n_rotations, H, W)`` map.
    offset, score_threshold
        As for :class:`MaxScoreOverRotations` (initial value of the output).
    """

    def __init__(
        self,
        shape: Sequence[int],
        n_rotations: int,
        aggregate_axis: Sequence[int] | None = None,
        offset: Sequence[int] | None = None,
        score_threshold: float = -math.inf,
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.n_rotations = int(n_rotations)
        if self.n_rotations < 1:
            raise InputError(f"n_rotations must be >= 1, got {n_rotations}")
        axes = (
            tuple(range(len(self.shape)))
            if aggregate_axis is None
            else tuple(int(a) % len(self.shape) for a in aggregate_axis)
        )
        self.aggregate_axis = axes
        kept = tuple(s for i, s in enumerate(self.shape) if i not in axes)
        self.offset = (
            np.zeros(len(self.shape), dtype=np.int64)
            if offset is None
            else (np.asarray(offset, dtype=np.int64))
        )
        self.score_threshold = float(score_threshold)
        self._scores = torch.full((self.n_rotations, *kept), self.score_threshold)
        self._keys: dict[bytes, int] = {}
        self._matrices: dict[int, np.ndarray] = {}

    def __call__(self, scores: Any, rotation_matrix: Any) -> None:
        """Add one score map for ``rotation_matrix`` (index = order of first appearance)."""
        r = np.asarray(
            rotation_matrix.detach().cpu()
            if isinstance(rotation_matrix, torch.Tensor)
            else rotation_matrix,
            dtype=np.float32,
        )
        key = _key(r)
        if key not in self._keys:
            idx = len(self._keys)
            if idx >= self.n_rotations:
                raise InputError(f"more than n_rotations={self.n_rotations} rotations seen")
            self._keys[key] = idx
            self._matrices[idx] = r.reshape(3, 3).copy()
        self.update(_as_tensor(scores)[None], torch.tensor([self._keys[key]]))

    def update(self, scores: torch.Tensor, indices: torch.Tensor) -> None:
        """Batched update: ``scores`` ``(B, *shape)`` for rotation ``indices`` ``(B,)``."""
        dims = tuple(a + 1 for a in self.aggregate_axis)
        best = torch.amax(scores, dim=dims)
        idx = indices.long()
        self._scores[idx] = torch.maximum(self._scores[idx], best.to(self._scores.dtype))

    @property
    def scores(self) -> np.ndarray:
        """``(n_rotations, ...)`` best score per rotation."""
        return self._scores.numpy()

    @property
    def rotation_mapping(self) -> dict[int, np.ndarray]:
        return dict(sorted(self._matrices.items()))

    def __iter__(self) -> Iterator[Any]:
        yield self.scores.copy()
        yield self.offset.copy()
        yield np.arange(self.n_rotations, dtype=np.int32)
        yield self.rotation_mapping

    @classmethod
    def merge(cls, param_stores: Iterable[MaxScoreOverTranslations]) -> MaxScoreOverTranslations:
        """Element-wise maximum of results for the same rotations (any splits)."""
        stores = list(param_stores)
        if not stores:
            raise InputError("merge needs at least one result")
        out = cls(
            stores[0].shape,
            stores[0].n_rotations,
            stores[0].aggregate_axis,
            score_threshold=min(s.score_threshold for s in stores),
        )
        for s in stores:
            if s._scores.shape != out._scores.shape:
                raise InputError("MaxScoreOverTranslations.merge: output shapes differ")
            torch.maximum(out._scores, s._scores, out=out._scores)
            out._matrices.update(s._matrices)
        return out


class MaxScoreOverRotationsConstrained(MaxScoreOverRotations):
    """:class:`MaxScoreOverRotations` restricted to seed positions and orientation cones.

    A voxel is allowed when it lies within ``acceptance_radius`` voxels (Euclidean; 0 = the
    seed voxel only) of a seed; among several seeds the nearest one decides. At rotation
    ``R`` the voxel's score is kept only if ``angle(R @ reference, R_seed @ reference) <=
    cone_angle`` (degrees; ``None`` accepts every orientation); otherwise it is multiplied by
    0 (pyTME's rejection rule). ``reference`` is an ``(x, y, z)`` template axis.

    Parameters
    ----------
    shape
        Score-map shape.
    positions
        ``(n, 3)`` seed voxel positions ``(z, y, x)`` in full-target coordinates.
    rotations
        ``(n, 3, 3)`` seed template rotations (``None``: no orientation constraint).
    cone_angle, reference, acceptance_radius
        See above.
    offset, score_threshold, thread_safe
        As for :class:`MaxScoreOverRotations`.
    """

    def __init__(
        self,
        shape: Sequence[int],
        positions: np.ndarray,
        rotations: np.ndarray | None = None,
        cone_angle: float | None = None,
        reference: Sequence[float] = (0.0, 0.0, 1.0),
        acceptance_radius: float = 0.0,
        offset: Sequence[int] | None = None,
        score_threshold: float = 0.0,
        thread_safe: bool = True,
    ) -> None:
        super().__init__(
            shape, offset=offset, score_threshold=score_threshold, thread_safe=thread_safe
        )
        pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        if len(pos) == 0:
            raise InputError("constrained search needs at least one seed position")
        self.positions = pos
        self.cone_angle = cone_angle
        self.acceptance_radius = float(acceptance_radius)
        ref = np.asarray(reference, dtype=np.float64)
        self.reference = ref / np.linalg.norm(ref)
        if cone_angle is not None and rotations is None:
            raise InputError("cone_angle needs the seed rotations")
        self._seed_axes = (
            None
            if rotations is None
            else (np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3) @ self.reference)
        )
        # label map: nearest seed within the acceptance radius, else -1
        from scipy.spatial import cKDTree

        grid = np.stack(np.meshgrid(*(np.arange(s) for s in self.shape), indexing="ij"), -1)
        grid = grid.reshape(-1, 3) + self.offset
        dist, label = cKDTree(pos).query(grid, k=1)
        label = np.where(dist <= self.acceptance_radius + 1e-9, label, -1)
        self._label = torch.from_numpy(label.reshape(self.shape).astype(np.int64))
        self._inside = self._label >= 0

    def accepted(self, matrices: np.ndarray) -> np.ndarray:
        """``(B, n_seeds)`` bool: rotation ``b`` is inside seed ``k``'s cone."""
        mats = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
        if self._seed_axes is None or self.cone_angle is None:
            return np.ones((len(mats), len(self.positions)), dtype=bool)
        axes = mats @ self.reference  # (B, 3)
        cos = axes @ self._seed_axes.T
        return cos >= math.cos(math.radians(self.cone_angle)) - 1e-9

    def update(self, scores, indices, matrices=None, scale=None):
        if matrices is None:
            matrices = np.stack([self._matrices[int(i)] for i in indices.tolist()])
        acc = torch.from_numpy(
            self.accepted(
                np.asarray(
                    matrices.detach().cpu() if isinstance(matrices, torch.Tensor) else matrices
                )
            )
        )
        lab = self._label.clamp(min=0)
        allowed = acc[:, lab] & self._inside  # (B, *shape)
        if scale is not None:
            scores = scores * scale
        super().update(
            scores * allowed.to(device=scores.device, dtype=scores.dtype), indices, matrices
        )
