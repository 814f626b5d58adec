"""``match_template``: exhaustive 3D template matching of a tomogram, split and merged.

The search space is cut into (target box, rotation chunk) tasks; every task fills a
:class:`~corrscan.match3d.analyzers.MaxScoreOverRotations` at its offset and
:meth:`MaxScoreOverRotations.merge` combines them. The steps are public, for drivers that run
tasks elsewhere (:mod:`corrscan.distributed.search3d`):

* :func:`prepare_search` checks the inputs, builds the rotation set, filters and normalises
  the target, pads and splits it (a :class:`Prepared3D`);
* :func:`search_tasks` lists the tasks ``(box, start, stop)`` (GLOBAL rotation indices,
  starts at multiples of the batch size: exactly the one-shot batches);
* :func:`search_task` runs one task and returns a plain, exactly mergeable state (the box's
  score map, GLOBAL rotation-index map and per-rotation statistics);
* :func:`merge_states` merges states; :func:`finish` turns a complete state into the
  :class:`~corrscan.match3d.results.MatchResult`, merging the boxes in their canonical order
  as :func:`match_template` does, so the result is bit for bit the one-shot result with the
  same ``target_splits``, ``batch_size`` and device (any ``rotation_chunks``).

:func:`match_template` is ``prepare_search`` + the tasks in this process (optionally on
rotation-parallel threads) + the same final merge. Rotation chunks start at multiples of the
batch size, so a chunked search runs exactly the same batches as the one-shot search and the
merged maps are bitwise identical. Target boxes are padded by the template half-widths with
the real neighbouring voxels (mirror padding at the tomogram border), so every reported voxel
sees the same data as in the one-shot padded search (equal up to FFT rounding of the
different box sizes).
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from corrscan.core.arrays import as_numpy, check_finite, free_memory_bytes, resolve_device
from corrscan.core.fourier import next_fast_len
from corrscan.core.progress import track
from corrscan.core.threads import torch_threads
from corrscan.errors import InputError
from corrscan.match3d import kernels
from corrscan.match3d.analyzers import MaxScoreOverRotations, MaxScoreOverRotationsConstrained
from corrscan.match3d.filters import FilterConfig, apply_filter, target_filter, template_filter
from corrscan.match3d.results import MatchResult
from corrscan.match3d.rotate import TemplateRotator
from corrscan.match3d.rotations import rotation_set
from corrscan.match3d.scores import SCORES, BoxScorer, laplace, needs_rotated_mask

__all__ = [
    "STATE_FORMAT",
    "Prepared3D",
    "finish",
    "match_template",
    "merge_states",
    "prepare_search",
    "search_task",
    "search_tasks",
    "spherical_mask",
    "split_boxes",
]

#: ``format`` tag of the partial states of :func:`search_task`
STATE_FORMAT = "corrscan.match3d.partial"


def spherical_mask(shape: Sequence[int], radius: float | None = None) -> np.ndarray:
    """Binary sphere (float32) of ``radius`` voxels (default ``min(shape) // 2``) at ``S // 2``."""
    shape = tuple(int(s) for s in shape)
    r = min(shape) // 2 if radius is None else float(radius)
    grids = np.meshgrid(*(np.arange(s) - s // 2 for s in shape), indexing="ij")
    return (sum(g.astype(np.float64) ** 2 for g in grids) <= r * r + 1e-9).astype(np.float32)


def _is_radial(mask: np.ndarray) -> bool:
    """True if ``mask`` is a function of the distance to the centre (within 1 %)."""
    grids = np.meshgrid(*(np.arange(s) - s // 2 for s in mask.shape), indexing="ij")
    r2 = np.rint(sum(g.astype(np.float64) ** 2 for g in grids)).astype(np.int64).ravel()
    v = mask.ravel().astype(np.float64)
    tol = 0.01 * max(float(np.abs(v).max()), 1e-12)
    # beyond the inscribed sphere the box cuts the shells: the mask must vanish there
    if np.any(np.abs(v[r2 > (min(mask.shape) // 2) ** 2]) > tol):
        return False
    inside = r2 <= (min(mask.shape) // 2) ** 2
    r2, v = r2[inside], v[inside]
    order = np.argsort(r2, kind="stable")
    r2, v = r2[order], v[order]
    _, start = np.unique(r2, return_index=True)
    vmax = np.maximum.reduceat(v, start)
    vmin = np.minimum.reduceat(v, start)
    return bool(np.all(vmax - vmin <= tol))


def split_boxes(
    shape: Sequence[int], splits: Mapping[int, int] | int | None
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Cut ``shape`` into ``(start, stop)`` boxes: ``{axis: pieces}`` or pieces per axis (int).

    Pieces differ by at most one voxel and tile the volume without overlap.
    """
    shape = tuple(int(s) for s in shape)
    if splits is None:
        splits = {}
    if isinstance(splits, int):
        splits = dict.fromkeys(range(len(shape)), splits)
    pieces = [int(splits.get(a, 1)) for a in range(len(shape))]
    for a, n in enumerate(pieces):
        if not 1 <= n <= shape[a]:
            raise InputError(
                f"target_splits: axis {a} of size {shape[a]} cannot be cut into {n} pieces"
            )
    edges = [
        np.linspace(0, s, n + 1).round().astype(int) for s, n in zip(shape, pieces, strict=True)
    ]
    boxes = []
    for idx in itertools.product(*(range(n) for n in pieces)):
        start = tuple(int(edges[a][i]) for a, i in enumerate(idx))
        stop = tuple(int(edges[a][i + 1]) for a, i in enumerate(idx))
        boxes.append((start, stop))
    return boxes


def _to_np(x: Any, name: str) -> np.ndarray:
    a = np.asarray(as_numpy(x), dtype=np.float32)
    if a.ndim != 3 or min(a.shape) < 1:
        raise InputError(f"{name} must be a 3D (z, y, x) array, got shape {a.shape}")
    check_finite(a, name)
    return a


@dataclass
class Prepared3D:
    """Prepared inputs of a 3D search (see :func:`prepare_search`).

    ``f_pad`` / ``t_pad`` are the filtered, normalised, padded target (and MCC target mask)
    as NumPy arrays; ``boxes`` the unpadded ``(start, stop)`` boxes; ``lo`` / ``hi`` the
    padding before / after each box; ``rots`` ``(n, 3, 3)`` the CPU rotation set and
    ``rots_d`` the same on ``device``; ``meta`` the settings recorded in the result.
    """

    f_pad: np.ndarray
    t_pad: np.ndarray | None
    boxes: list[tuple[tuple[int, ...], tuple[int, ...]]]
    lo: tuple[int, ...]
    hi: tuple[int, ...]
    template_shape: tuple[int, ...]
    tomogram_shape: tuple[int, ...]
    rots: torch.Tensor
    score: str
    batch_size: int
    device: torch.device
    seeds: dict[str, Any] | None
    score_threshold: float
    overlap_ratio: float
    num_threads: int | None
    fused: bool
    n_workers: int
    kernel_threads: int
    pixel_size: float
    meta: dict[str, Any]
    mask: torch.Tensor = field(repr=False, default=None)  # type: ignore[assignment]
    rotator: Any = field(repr=False, default=None)
    mask_rotator: Any = field(repr=False, default=None)
    filt: torch.Tensor | None = field(repr=False, default=None)
    rots_d: torch.Tensor = field(repr=False, default=None)  # type: ignore[assignment]
    _scorers: dict[int, tuple[BoxScorer, tuple, torch.Tensor | None]] = field(
        default_factory=dict, repr=False
    )

    @property
    def n_rotations(self) -> int:
        """Number of rotations searched."""
        return int(self.rots.shape[0])

    @property
    def defer_scale(self) -> bool:
        """The fused FLCSphericalMask path defers the normalisation into the analyzer update."""
        return self.fused and self.score == "FLCSphericalMask"


def prepare_search(
    tomogram: Any,
    template: Any,
    *,
    template_mask: Any = None,
    target_mask: Any = None,
    score: str = "FLCSphericalMask",
    angular_step: float | None = None,
    n_rotations: int | None = None,
    rotations: Any = None,
    symmetry: str = "C1",
    cone_axis: tuple[float, float, float] | None = None,
    cone_angle: float | None = None,
    interpolation_order: int = 3,
    filters: FilterConfig | Mapping[str, Any] | None = None,
    pixel_size: float = 1.0,
    target_splits: Mapping[int, int] | int | None = None,
    pad_edges: bool | None = None,
    batch_size: int | None = None,
    constraints: Mapping[str, Any] | None = None,
    score_threshold: float = -math.inf,
    overlap_ratio: float = 0.3,
    device: str | None = "cpu",
    num_threads: int | None = None,
    fused: bool | None = None,
    workers: int | None = None,
) -> Prepared3D:
    """Everything :func:`match_template` does before searching; same arguments and defaults.

    ``rotation_chunks`` and ``progress`` are left out (they only change how tasks are run).
    ``fused``, ``num_threads`` and ``workers`` default from the WHOLE search (FFT box size,
    rotations x boxes), so separately run tasks use the same kernels as the one-shot search;
    :func:`search_task` runs one task on the calling thread whatever ``workers`` is (pass
    ``workers=1`` for tasks run elsewhere).

    Returns
    -------
    Prepared3D
        Inputs of :func:`search_tasks`, :func:`search_task` and :func:`finish`.
    """
    if score not in SCORES:
        raise InputError(f"unknown score {score!r}: choose one of {', '.join(SCORES)}")
    if interpolation_order not in (1, 3):
        raise InputError(f"interpolation_order must be 1 or 3, got {interpolation_order}")
    if not pixel_size > 0:
        raise InputError(f"pixel_size must be > 0 Å, got {pixel_size}")
    dev = resolve_device(device)
    if filters is None:
        fcfg = FilterConfig()
    elif isinstance(filters, FilterConfig):
        fcfg = filters
    else:
        fcfg = FilterConfig.from_dict(dict(filters))
    tomo = _to_np(tomogram, "tomogram")
    tmpl = _to_np(template, "template")
    if any(s > t for s, t in zip(tmpl.shape, tomo.shape, strict=True)):
        raise InputError(
            f"template {tmpl.shape} is larger than the tomogram {tomo.shape} on some axis: "
            "crop the template or use a larger tomogram"
        )
    if template_mask is None:
        mask = spherical_mask(tmpl.shape)
    else:
        mask = _to_np(template_mask, "template_mask")
    if mask.shape != tmpl.shape:
        raise InputError(f"template_mask {mask.shape} must match the template {tmpl.shape}")
    if score == "FLCSphericalMask" and not _is_radial(mask):
        warnings.warn(
            "FLCSphericalMask assumes a rotation-invariant (spherical) template mask, but the "
            "given mask is not: the local normalisation is wrong for rotated templates. Use "
            "score='FLC' (mask rotated per rotation) for non-spherical masks.",
            UserWarning,
            stacklevel=3,
        )
    tmask = None if target_mask is None else _to_np(target_mask, "target_mask")
    if tmask is not None and tmask.shape != tomo.shape:
        raise InputError(f"target_mask {tmask.shape} must match the tomogram {tomo.shape}")

    # ------------------------------------------------------------ rotations
    given = sum(x is not None for x in (angular_step, n_rotations, rotations))
    if given != 1:
        raise InputError("give exactly one of angular_step, n_rotations or rotations")
    if rotations is not None:
        rots = torch.as_tensor(np.asarray(as_numpy(rotations), dtype=np.float32))
        if rots.ndim != 3 or rots.shape[1:] != (3, 3) or rots.shape[0] < 1:
            raise InputError(
                f"rotations must be (n, 3, 3) with n >= 1, got {tuple(rots.shape)}: the "
                "rotation search space is empty or malformed"
            )
    else:
        rots = rotation_set(
            angular_step=angular_step, n_rotations=n_rotations, symmetry=symmetry,
            cone_axis=cone_axis, cone_angle=cone_angle,
        )  # fmt: skip
    if not torch.isfinite(rots).all():
        raise InputError("rotations contain NaN or Inf: pass finite (n, 3, 3) matrices")
    seeds = None
    if constraints is not None:
        allowed = {"positions", "rotations", "cone_angle", "acceptance_radius", "reference"}
        unknown = set(constraints) - allowed
        if unknown:
            raise InputError(f"unknown constraints {sorted(unknown)}: allowed {sorted(allowed)}")
        seeds = dict(constraints)
        probe = MaxScoreOverRotationsConstrained(
            (1, 1, 1), positions=seeds["positions"], rotations=seeds.get("rotations"),
            cone_angle=seeds.get("cone_angle"),
            reference=seeds.get("reference", (0.0, 0.0, 1.0)),
        )  # fmt: skip
        keep = probe.accepted(rots.numpy()).any(axis=1)
        rots = rots[torch.from_numpy(keep)]
        if len(rots) == 0:
            raise InputError("no rotation of the set lies inside any seed's cone")
    n_rot = int(rots.shape[0])

    # ------------------------------------------------------------ target / template prep
    tomo_t = torch.from_numpy(tomo)
    tfilt = target_filter(tomo.shape, pixel_size, fcfg, tomogram=tomo_t)
    f = apply_filter(tomo_t, tfilt).numpy() if tfilt is not None else tomo.copy()
    g = tmpl.astype(np.float32)
    if score == "LCC":
        f = laplace(f).astype(np.float32)
        g = laplace(g).astype(np.float32)
    if score in ("NCC", "FLCSphericalMask", "FLC", "MCC"):
        sd = float(f.std(dtype=np.float64))
        f = ((f - float(f.mean(dtype=np.float64))) / (sd if sd > 0 else 1.0)).astype(np.float32)
    if tmask is not None and score != "MCC":
        f = f * tmask
    filt = template_filter(tmpl.shape, pixel_size, fcfg, tomogram=tomo_t)

    # ------------------------------------------------------------ boxes
    boxes = split_boxes(tomo.shape, target_splits)
    if pad_edges is None:
        pad_edges = len(boxes) > 1
    elif not pad_edges and len(boxes) > 1:
        raise InputError(
            "target_splits need pad_edges=True (each box is padded with its neighbours' voxels)"
        )
    centre = tuple(s // 2 for s in tmpl.shape)
    lo = centre if pad_edges else (0, 0, 0)
    hi = (
        tuple(s - 1 - c for s, c in zip(tmpl.shape, centre, strict=True))
        if pad_edges
        else (0, 0, 0)
    )
    pad_width = list(zip(lo, hi, strict=True))
    f_pad = np.pad(f, pad_width, mode="symmetric") if pad_edges else f
    t_pad = None
    if score == "MCC":
        t_src = np.ones_like(f) if tmask is None else tmask
        t_pad = np.pad(t_src, pad_width, mode="constant") if pad_edges else t_src

    # ------------------------------------------------------------ execution plan
    if batch_size is None:
        batch_size = 2 if dev.type == "cpu" else 8  # CPU: one complex FFT pair per 2 rotations
    batch_size = max(1, int(batch_size))
    big = max(
        math.prod(
            next_fast_len(b - a + l_ + h_) for a, b, l_, h_ in zip(st, sp, lo, hi, strict=True)
        )
        for st, sp in boxes
    )
    if num_threads is None and dev.type == "cpu" and big < 96**3:
        num_threads = 1
    if workers is None:
        workers = 1
        if dev.type == "cpu" and num_threads is None:
            # rotation-parallel threads instead of intra-op threads, as memory allows
            per_worker = 3 * 4 * big * batch_size * (3 if score in ("FLC", "MCC") else 1)
            fit = max(1, int(0.5 * free_memory_bytes("cpu")) // max(per_worker, 1))
            workers = max(1, min(torch.get_num_threads(), fit, n_rot // batch_size or 1))
    n_workers = int(workers)
    if n_workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if n_workers > 1:
        if dev.type != "cpu":
            raise InputError("workers > 1 is for CPU searches; on a GPU use batch_size")
        num_threads = 1
    if fused is None:
        fused = dev.type == "cpu" and kernels.AVAILABLE
    fused = bool(fused) and dev.type == "cpu" and kernels.AVAILABLE
    # one search thread with intra-op FFT threads: the compiled kernels split their work too
    kernel_threads = 1
    if dev.type == "cpu" and n_workers == 1:
        kernel_threads = max(1, int(num_threads or torch.get_num_threads()))

    g_t = torch.from_numpy(g).to(dev)
    m_t = torch.from_numpy(mask).to(dev)
    meta = {
        "score": score,
        "n_rotations": n_rot,
        "angular_step": angular_step,
        "symmetry": symmetry,
        "interpolation_order": interpolation_order,
        "pad_edges": bool(pad_edges),
        "target_splits": len(boxes),
        "batch_size": batch_size,
        "fused_update": fused,
        "workers": n_workers,
        "kernel_threads": kernel_threads,
        "template_shape": list(tmpl.shape),
        "tomogram_shape": list(tomo.shape),
        "filters": fcfg.model_dump(mode="json"),
        "device": str(dev),
    }
    return Prepared3D(
        f_pad=f_pad,
        t_pad=t_pad,
        boxes=boxes,
        lo=tuple(lo),
        hi=tuple(hi),
        template_shape=tuple(tmpl.shape),
        tomogram_shape=tuple(tomo.shape),
        rots=rots,
        score=score,
        batch_size=batch_size,
        device=dev,
        seeds=seeds,
        score_threshold=float(score_threshold),
        overlap_ratio=float(overlap_ratio),
        num_threads=num_threads,
        fused=fused,
        n_workers=n_workers,
        kernel_threads=kernel_threads,
        pixel_size=float(pixel_size),
        meta=meta,
        mask=m_t,
        rotator=TemplateRotator(g_t, order=interpolation_order, threads=kernel_threads),
        mask_rotator=TemplateRotator(m_t, order=1) if needs_rotated_mask(score) else None,
        filt=None if filt is None else filt.to(dev),
        rots_d=rots.to(dev),
    )


def search_tasks(
    prep: Prepared3D, rotation_chunks: int | None = None, chunk_size: int | None = None
) -> list[tuple[int, int, int]]:
    """Tasks ``(box, start, stop)``: boxes x rotation ranges, box-major (the one-shot order).

    ``rotation_chunks`` splits the rotations like ``match_template(rotation_chunks=...)``;
    ``chunk_size`` gives rotations per chunk instead. Both are rounded up to whole batches.
    Default: one chunk per box.
    """
    n_rot, b = prep.n_rotations, prep.batch_size
    if rotation_chunks is not None and chunk_size is not None:
        raise InputError("give rotation_chunks or chunk_size, not both")
    if chunk_size is None:
        nc = 1 if rotation_chunks is None else int(rotation_chunks)
        if nc < 1:
            raise InputError(f"rotation_chunks must be >= 1, got {rotation_chunks}")
        chunk_size = math.ceil(n_rot / nc)
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    size = math.ceil(int(chunk_size) / b) * b
    ranges = [(s, min(s + size, n_rot)) for s in range(0, n_rot, size)]
    return [(i, a, c) for i in range(len(prep.boxes)) for a, c in ranges]


def _box_scorer(prep: Prepared3D, i: int) -> tuple[BoxScorer, tuple, torch.Tensor | None]:
    """Scorer of box ``i``, the slices of its reported region and the deferred scale.

    Cached on ``prep``, one box at a time (its FFT buffers are the big allocation).
    """
    hit = prep._scorers.get(i)
    if hit is not None:
        return hit
    prep._scorers.clear()
    start, stop = prep.boxes[i]
    lo, hi = prep.lo, prep.hi
    core = tuple(b - a for a, b in zip(start, stop, strict=True))
    sl = tuple(slice(a, b + l_ + h_) for a, b, l_, h_ in zip(start, stop, lo, hi, strict=True))
    box = torch.from_numpy(np.ascontiguousarray(prep.f_pad[sl])).to(prep.device)
    tbox = None
    if prep.t_pad is not None:
        tbox = torch.from_numpy(np.ascontiguousarray(prep.t_pad[sl])).to(prep.device)
    fft_shape = tuple(next_fast_len(s) for s in box.shape)
    scorer = BoxScorer(
        box, prep.template_shape, prep.mask, tbox, prep.score, fft_shape, prep.batch_size,
        overlap_ratio=prep.overlap_ratio, defer_scale=prep.defer_scale,
    )  # fmt: skip
    valid = (slice(None), *(slice(l_, l_ + c) for l_, c in zip(lo, core, strict=True)))
    scale = scorer.scale[valid[1:]] if prep.defer_scale else None
    prep._scorers[i] = (scorer, valid, scale)
    return prep._scorers[i]


def _new_analyzer(prep: Prepared3D, i: int) -> MaxScoreOverRotations:
    start, stop = prep.boxes[i]
    core = tuple(b - a for a, b in zip(start, stop, strict=True))
    seeds = prep.seeds
    if seeds is not None:
        an: MaxScoreOverRotations = MaxScoreOverRotationsConstrained(
            core, positions=seeds["positions"], rotations=seeds.get("rotations"),
            cone_angle=seeds.get("cone_angle"),
            reference=seeds.get("reference", (0.0, 0.0, 1.0)),
            acceptance_radius=seeds.get("acceptance_radius", 0.0), offset=start,
            score_threshold=prep.score_threshold, thread_safe=False,
        )  # fmt: skip
    else:
        an = MaxScoreOverRotations(
            core, offset=start, score_threshold=prep.score_threshold, thread_safe=False
        )
    an.fused = prep.fused
    an.kernel_threads = prep.kernel_threads
    return an.to(prep.device) if prep.device.type != "cpu" else an


def _search_range(
    prep: Prepared3D,
    box: int,
    start: int,
    stop: int,
    scorer: BoxScorer,
    valid: tuple,
    scale: torch.Tensor | None,
    tick: Iterator[Any] | None = None,
) -> MaxScoreOverRotations:
    """Rotations ``[start, stop)`` of box ``box`` into a new analyzer (batch by batch)."""
    an = _new_analyzer(prep, box)
    b = prep.batch_size
    for b0 in range(start, stop, b):
        _search_batch(prep, an, b0, min(b0 + b, stop), scorer, valid, scale)
        if tick is not None:
            next(tick, None)
    return an


def _search_batch(
    prep: Prepared3D,
    an: MaxScoreOverRotations,
    b0: int,
    b1: int,
    scorer: BoxScorer,
    valid: tuple,
    scale: torch.Tensor | None,
) -> None:
    """Rotations ``[b0, b1)`` (one batch) of a box into the analyzer ``an``."""
    r = prep.rots_d[b0:b1]
    gr = apply_filter(prep.rotator(r), prep.filt)
    if prep.mask_rotator is not None:
        mr = prep.mask_rotator(r)
    elif prep.score == "FLCSphericalMask":
        mr = prep.mask[None]
    else:
        mr = None
    sc = scorer(gr, mr)
    idx = torch.arange(b0, b1, dtype=torch.int32)
    an.update(sc[valid], idx, prep.rots[b0:b1], scale=scale)


def _search_range_pooled(
    free: queue.SimpleQueue,
    prep: Prepared3D,
    box: int,
    start: int,
    stop: int,
    valid: tuple,
    scale: torch.Tensor | None,
) -> MaxScoreOverRotations:
    """:func:`_search_range` on a worker thread with a scorer taken from ``free``.

    Each scorer's work buffers are used by one thread at a time (a task waits for a free
    one); OpenMP/MKL thread counts are per thread, so each worker sets its own to 1.
    """
    torch.set_num_threads(1)
    scorer = free.get()
    try:
        return _search_range(prep, box, start, stop, scorer, valid, scale)
    finally:
        free.put(scorer)


def _search_ranges_balanced(
    prep: Prepared3D,
    box: int,
    ranges: Sequence[tuple[int, int]],
    scorer: BoxScorer,
    valid: tuple,
    scale: torch.Tensor | None,
    tick: Iterator[Any] | None,
) -> list[MaxScoreOverRotations]:
    """Rotation ranges of one box on ``prep.n_workers`` threads, balanced at run time.

    Each range is cut into ``ceil(n_workers / 2)`` contiguous segments; two threads share a
    segment, one taking batches from its start upwards, the other from its end downwards,
    until they meet, so neither idles while the other still has work (static halves left one
    thread alone for up to a third of a run). Each thread keeps one analyzer over one
    contiguous part; the downward one lets equal scores go to the new (smaller) index
    (``ties_to_new``), so every voxel keeps the same rotation as a one-thread search and the
    merge is exact. Needs the compiled update (``prep.fused``).
    """
    batch, n_workers = prep.batch_size, prep.n_workers
    n_seg = math.ceil(n_workers / 2)
    jobs = []  # (segment state, direction)
    for c0, c1 in ranges:
        n_b = math.ceil((c1 - c0) / batch)
        edges = [c0 + batch * round(k * n_b / n_seg) for k in range(n_seg + 1)]
        for a, c in itertools.pairwise(edges):
            c = min(c, c1)
            if c <= a:
                continue
            seg = {"lo": a, "hi": c, "lock": threading.Lock()}
            jobs.append((seg, +1))
            if len(jobs) < n_workers:
                jobs.append((seg, -1))
    lock = threading.Lock()

    def next_batch(seg: dict, direction: int) -> tuple[int, int] | None:
        with seg["lock"]:
            if seg["lo"] >= seg["hi"]:
                return None
            if direction > 0:
                b0 = seg["lo"]
                b1 = min(b0 + batch, seg["hi"])
                seg["lo"] = b1
            else:  # the last batch: starts at a multiple of the batch from the range start
                b0 = seg["lo"] + ((seg["hi"] - 1 - seg["lo"]) // batch) * batch
                b1 = seg["hi"]
                seg["hi"] = b0
            return b0, b1

    def work(seg: dict, direction: int, sc: BoxScorer) -> MaxScoreOverRotations | None:
        torch.set_num_threads(1)
        an = _new_analyzer(prep, box)
        an.ties_to_new = direction < 0
        done = 0
        while (nb := next_batch(seg, direction)) is not None:
            _search_batch(prep, an, nb[0], nb[1], sc, valid, scale)
            done += 1
            if tick is not None:
                with lock:
                    next(tick, None)
        return an if done else None

    scorers = [scorer] + [scorer.fork() for _ in range(len(jobs) - 1)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [
            pool.submit(work, seg, d, sc) for (seg, d), sc in zip(jobs, scorers, strict=True)
        ]
        found = [f.result() for f in futures]
    # merge order = index order of the parts (front parts come before back parts)
    return [an for an in found if an is not None]


def _check_task(prep: Prepared3D, box: int, start: int, stop: int) -> None:
    if not 0 <= box < len(prep.boxes):
        raise InputError(f"box {box} outside [0, {len(prep.boxes)})")
    if not 0 <= start < stop <= prep.n_rotations:
        raise InputError(f"rotation range [{start}, {stop}) outside [0, {prep.n_rotations})")
    if start % prep.batch_size:
        raise InputError(
            f"rotation range start {start} is not a multiple of the batch size "
            f"{prep.batch_size}: use search_tasks()"
        )


def _box_state(an: MaxScoreOverRotations, n_rot: int) -> dict[str, torch.Tensor]:
    """Dense per-box state (statistics as ``(n_rotations,)`` tensors) of an analyzer."""
    sd = an.state_dict()
    idx = sd["stats_index"]
    s1 = torch.zeros(n_rot, dtype=torch.float64)
    s2 = torch.zeros(n_rot, dtype=torch.float64)
    n = torch.zeros(n_rot, dtype=torch.int64)
    seen = torch.zeros(n_rot, dtype=torch.bool)
    s1[idx], s2[idx], n[idx], seen[idx] = sd["stats"][:, 0], sd["stats"][:, 1], sd["counts"], True
    return {
        "scores": sd["scores"],
        "rotations": sd["rotations"],
        "s1": s1,
        "s2": s2,
        "n": n,
        "seen": seen,
    }


def search_task(prep: Prepared3D, box: int, start: int, stop: int) -> dict[str, Any]:
    """Search rotations ``[start, stop)`` (global indices) in target box ``box``.

    Runs on the calling thread with ``prep.num_threads`` torch threads.

    Returns
    -------
    dict
        ``{"format": STATE_FORMAT, "boxes": {box: {"scores" (box shape) float32,
        "rotations" int32 (global indices, -1 = nothing recorded), "s1", "s2" float64,
        "n" int64, "seen" bool (n_rotations,)}}}`` on the CPU (per-rotation sum, sum of
        squares, count, and which rotations were searched).
    """
    _check_task(prep, box, start, stop)
    with torch_threads(prep.num_threads):  # the one-shot search builds its scorers inside it too
        scorer, valid, scale = _box_scorer(prep, box)
        an = _search_range(prep, box, start, stop, scorer, valid, scale)
    return {"format": STATE_FORMAT, "boxes": {int(box): _box_state(an, prep.n_rotations)}}


def _merge_box(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, Any]:
    if a["scores"].shape != b["scores"].shape:
        raise InputError("cannot merge match3d states of different box shapes")
    if bool((a["seen"] & b["seen"]).any()):
        raise InputError("the same rotation was searched twice in one box (overlapping tasks)")
    c, cr = a["scores"], a["rotations"]
    s, r = b["scores"], b["rotations"]
    valid = r >= 0
    take = (s > c) | ((s == c) & valid & ((r < cr) | (cr < 0)))
    take &= valid | (s > c)
    return {
        "scores": torch.where(take, s, c),
        "rotations": torch.where(take, r, cr),
        "s1": torch.where(b["seen"], b["s1"], a["s1"]),
        "s2": torch.where(b["seen"], b["s2"], a["s2"]),
        "n": torch.where(b["seen"], b["n"], a["n"]),
        "seen": a["seen"] | b["seen"],
    }


def merge_states(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Exact merge of two :func:`search_task` states (new dict; the inputs are not modified).

    Within a box: max with the smaller global rotation index on ties (rotation ranges are
    disjoint, so per-rotation statistics never add); boxes are kept apart until
    :func:`finish`.
    """
    for st in (a, b):
        if not isinstance(st, dict) or st.get("format") != STATE_FORMAT:
            raise InputError("not a match3d partial state (format mismatch)")
    boxes = dict(a["boxes"])
    for i, box in b["boxes"].items():
        boxes[i] = _merge_box(boxes[i], box) if i in boxes else box
    return {"format": STATE_FORMAT, "boxes": boxes}


def _result(
    prep: Prepared3D, analyzers: Sequence[MaxScoreOverRotations], meta: dict[str, Any]
) -> MatchResult:
    """Merge per-task analyzers (boxes in canonical order) into the :class:`MatchResult`."""
    merged = MaxScoreOverRotations.merge(
        analyzers, output_shape=prep.tomogram_shape, score_threshold=prep.score_threshold
    )
    mapping = merged.rotation_mapping
    table = np.stack([mapping[i] for i in range(len(mapping))]) if mapping else np.zeros((0, 3, 3))
    return MatchResult(
        scores=merged.scores.copy(),
        rotation_index=merged.rotations.copy(),
        rotations=table.astype(np.float32),
        pixel_size=prep.pixel_size,
        score_mean=merged.score_mean,
        score_std=merged.score_std,
        score_count=merged.score_count,
        template_shape=prep.template_shape,
        metadata=meta,
    )


def finish(prep: Prepared3D, state: dict[str, Any], *, seconds: float | None = None) -> MatchResult:
    """The :class:`MatchResult` of a complete merged state (every task searched once).

    One analyzer per box is rebuilt with
    :meth:`~corrscan.match3d.analyzers.MaxScoreOverRotations.from_state_dict` and the boxes
    are merged in their canonical order, as :func:`match_template` does.
    """
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise InputError("not a match3d partial state (format mismatch)")
    n_rot = prep.n_rotations
    boxes = state["boxes"]
    missing = [
        i for i in range(len(prep.boxes)) if i not in boxes or not bool(boxes[i]["seen"].all())
    ]
    if missing:
        raise InputError(
            f"the merged state misses rotations of boxes {missing[:5]}: some tasks are missing"
        )
    every = torch.arange(n_rot, dtype=torch.int64)
    analyzers = [
        MaxScoreOverRotations.from_state_dict(
            {
                "scores": boxes[i]["scores"],
                "rotations": boxes[i]["rotations"],
                "offset": start,
                "score_threshold": prep.score_threshold,
                # every matrix in index order, as the one-shot chunks of a box register them
                "matrix_index": every,
                "matrices": prep.rots,
                "stats_index": every,
                "stats": torch.stack([boxes[i]["s1"], boxes[i]["s2"]], dim=1),
                "counts": boxes[i]["n"],
            },
            thread_safe=False,
        )
        for i, (start, _stop) in enumerate(prep.boxes)
    ]
    meta = dict(prep.meta)
    meta["seconds"] = seconds
    return _result(prep, analyzers, meta)


def match_template(
    tomogram: Any,
    template: Any,
    *,
    template_mask: Any = None,
    target_mask: Any = None,
    score: str = "FLCSphericalMask",
    angular_step: float | None = None,
    n_rotations: int | None = None,
    rotations: Any = None,
    symmetry: str = "C1",
    cone_axis: tuple[float, float, float] | None = None,
    cone_angle: float | None = None,
    interpolation_order: int = 3,
    filters: FilterConfig | Mapping[str, Any] | None = None,
    pixel_size: float = 1.0,
    target_splits: Mapping[int, int] | int | None = None,
    rotation_chunks: int = 1,
    pad_edges: bool | None = None,
    batch_size: int | None = None,
    constraints: Mapping[str, Any] | None = None,
    score_threshold: float = -math.inf,
    overlap_ratio: float = 0.3,
    device: str | None = "cpu",
    num_threads: int | None = None,
    progress: bool | None = None,
    fused: bool | None = None,
    workers: int | None = None,
    background_correction: str | None = None,
) -> MatchResult:
    """Exhaustive 3D template matching of ``template`` in ``tomogram``.

    Parameters
    ----------
    tomogram
        ``(D, H, W)`` target (NumPy/CuPy/torch), voxel size ``pixel_size`` Å.
    template
        ``(S0, S1, S2)`` template, same voxel size, each axis <= the tomogram's. Its centre
        voxel ``S // 2`` is the reported position; rotations turn it about that voxel.
    template_mask
        ``(S0, S1, S2)`` mask for the local-normalisation scores (default: a sphere of
        radius ``min(S) // 2``). FLCSphericalMask assumes it is rotation-invariant and warns
        if it is not.
    target_mask
        ``(D, H, W)``: the Padfield ``t`` of MCC; for the other scores the target is
        multiplied by it.
    score
        ``"CC" | "LCC" | "NCC" | "FLCSphericalMask" | "FLC" | "MCC"`` (see
        :mod:`corrscan.match3d.scores`).
    angular_step, n_rotations, rotations
        Exactly one: the covering radius in degrees, the size of the full set, or explicit
        ``(n, 3, 3)`` template rotations. The count is ``result.n_rotations``.
    symmetry
        ``"C1" | "Cn" | "Dn"`` template symmetry (reduces the set).
    cone_axis, cone_angle
        Restrict the template z axis to a cone (degrees) about ``(x, y, z)`` ``cone_axis``.
    interpolation_order
        1 (trilinear) or 3 (cubic B-spline) for the template; masks always use 1.
    filters
        :class:`~corrscan.match3d.filters.FilterConfig` (or its fields as a dict).
    pixel_size
        Å per voxel (filters, tables).
    target_splits
        ``{axis: pieces}`` or pieces per axis; results are merged into the full map.
    rotation_chunks
        Number of rotation chunks (each searched separately and merged; for testing and for
        spreading work).
    pad_edges
        Pad each box by the template half-widths (mirror at the tomogram border) so no
        correlation wraps around. Default: off for one box (circular over the FFT box, like
        pyTME), on when the target is split (required).
    batch_size
        Rotations per step. Default 2 on CPU, where each pair of rotations shares one complex
        FFT pair (:mod:`corrscan.match3d.scores`, "paired transforms"; results depend on the
        pairing at the rounding level, so compare searches with equal batch sizes); 8 on a
        GPU (batched real transforms).
    constraints
        Position/orientation-constrained search: ``{"positions": (n, 3) (z, y, x),
        "rotations": (n, 3, 3) or None, "cone_angle": deg or None, "acceptance_radius":
        voxels, "reference": (x, y, z)}``; rotations outside every seed's cone are skipped.
    score_threshold
        Initial value of the max map (``-inf`` keeps every maximum).
    overlap_ratio
        MCC minimum overlap.
    device
        ``"cpu"``, ``"cuda:N"`` or ``"auto"``.
    num_threads
        torch intra-op threads during the search. ``None``: 1 for small FFT boxes (below
        ``96^3`` voxels, where threading costs more than it saves, badly so on a loaded
        machine), else torch's current setting.
    progress
        Progress bar (default: on for a terminal).
    workers
        CPU only: rotation-parallel worker threads in this process, each running
        single-threaded torch ops on its own buffers (one copy of the target spectra). Scales
        better than torch's intra-op threads for FFT-bound searches, especially on a busy
        machine. With the compiled update, two threads share each part of the rotation range
        from both ends, so the load balances at run time. Results are identical to
        ``workers=1``. Default: for CPU boxes of at least
        ``96^3`` voxels with ``num_threads`` unset, torch's thread count (as memory allows),
        else 1.
    fused
        Fuse normalisation, max/argmax update and statistics into one compiled pass over the
        score maps (:func:`corrscan.match3d.kernels.max_update`, numba, GIL released, so
        worker threads update in parallel) instead of about six torch passes. Default: on for
        CPU searches when numba is installed (compiled once, cached on disk).
    background_correction
        ``"phase-scrambling"`` (pyTME's option): the same search is run again with the
        template's phases scrambled (:func:`corrscan.match3d.template.phase_scramble`, seed
        42) and ``scores - (background - mean(background))`` is returned
        (:func:`corrscan.match3d.background.correct_background`); twice the work.

    Returns
    -------
    MatchResult
        Maps ``scores`` / ``rotation_index`` ``(D, H, W)``, the rotation table, statistics.
    """
    # every search setting, for the background search (the same call with another template)
    settings = {
        k: v
        for k, v in locals().items()
        if k not in ("tomogram", "template", "background_correction")
    }
    t_start = time.perf_counter()
    if rotation_chunks < 1:
        raise InputError(f"rotation_chunks must be >= 1, got {rotation_chunks}")
    if background_correction is not None:
        if background_correction != "phase-scrambling":
            raise InputError(
                "background_correction must be None or 'phase-scrambling', "
                f"got {background_correction!r}"
            )
        from corrscan.match3d.background import correct_background
        from corrscan.match3d.template import phase_scramble

        result = match_template(tomogram, template, **settings)
        scrambled = phase_scramble(as_numpy(template), seed=42)
        background = match_template(tomogram, scrambled, **settings)
        return correct_background(result, background, details={"seed": 42})
    prep = prepare_search(
        tomogram, template, template_mask=template_mask, target_mask=target_mask, score=score,
        angular_step=angular_step, n_rotations=n_rotations, rotations=rotations,
        symmetry=symmetry, cone_axis=cone_axis, cone_angle=cone_angle,
        interpolation_order=interpolation_order, filters=filters, pixel_size=pixel_size,
        target_splits=target_splits, pad_edges=pad_edges, batch_size=batch_size,
        constraints=constraints, score_threshold=score_threshold, overlap_ratio=overlap_ratio,
        device=device, num_threads=num_threads, fused=fused, workers=workers,
    )  # fmt: skip
    tasks = search_tasks(prep, rotation_chunks=rotation_chunks)
    batch, n_workers = prep.batch_size, prep.n_workers
    n_batches = sum(math.ceil((c - a) / batch) for _, a, c in tasks)
    analyzers: list[MaxScoreOverRotations] = []
    with torch_threads(prep.num_threads):
        bar = track(
            range(n_batches),
            total=n_batches * batch,
            description="match3d",
            unit="rot",
            scale=batch,
            enabled=progress,
        )
        tick = iter(bar)
        for i in range(len(prep.boxes)):
            scorer, valid, scale = _box_scorer(prep, i)
            ranges = [(a, c) for j, a, c in tasks if j == i]
            if n_workers == 1:
                for a, c in ranges:
                    analyzers.append(_search_range(prep, i, a, c, scorer, valid, scale, tick))
                continue
            if prep.fused:
                analyzers += _search_ranges_balanced(prep, i, ranges, scorer, valid, scale, tick)
                continue
            # rotation-parallel threads (torch ops release the GIL), one buffer set each;
            # sub-ranges start at multiples of the batch size, so the merge is exact
            sub = []
            for c0, c1 in ranges:
                per = math.ceil(math.ceil((c1 - c0) / n_workers) / batch) * batch
                sub += [(a, min(a + per, c1)) for a in range(c0, c1, per)]
            n_forks = min(n_workers, len(sub))
            free: queue.SimpleQueue = queue.SimpleQueue()  # a scorer is used by one thread
            for sc in [scorer] + [scorer.fork() for _ in range(n_forks - 1)]:
                free.put(sc)
            with ThreadPoolExecutor(max_workers=n_forks) as pool:
                futures = [
                    pool.submit(_search_range_pooled, free, prep, i, a, c, valid, scale)
                    for a, c in sub
                ]
                for fut, (a, c) in zip(futures, sub, strict=True):
                    analyzers.append(fut.result())
                    for _ in range(math.ceil((c - a) / batch)):
                        next(tick, None)
        for _ in tick:
            pass
    prep._scorers.clear()
    elapsed = time.perf_counter() - t_start
    n_rot = prep.n_rotations
    meta = dict(prep.meta)
    meta["rotation_chunks"] = len({(a, c) for _, a, c in tasks})
    meta["seconds"] = elapsed
    meta["rotations_per_second"] = n_rot * len(prep.boxes) / elapsed if elapsed > 0 else None
    return _result(prep, analyzers, meta)
