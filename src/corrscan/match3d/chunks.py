"""Chunk-level hooks of the 3D search: one (target box, rotation range) task at a time.

:func:`corrscan.match3d.search.match_template` loops over target boxes and rotation chunks in
one process and merges the per-task analyzers at the end. The distributed driver
(:mod:`corrscan.distributed.search3d`) needs each task on its own, returning a plain state
that merges exactly:

* :func:`prepare_search` does what ``match_template`` does before its loop (checks, rotation
  set, filters, normalisation, padding, box split) and returns a :class:`Prepared3D`;
* :func:`search_tasks` lists the tasks ``(box, start, stop)`` (rotation ranges with GLOBAL
  indices, starts at multiples of the batch size, exactly the one-shot batches);
* :func:`search_task` runs one task with the job's own analyzer and returns its state: the
  box's score map, the GLOBAL rotation-index map and the per-rotation statistics
  ``(sum, sum of squares, count)`` as dense ``(n_rotations,)`` tensors;
* :func:`merge_states` merges states: within a box, max with the smaller global index on ties
  (rotation ranges are disjoint, so the per-rotation statistics never add); boxes are kept
  apart;
* :func:`finish` builds one analyzer per box and calls
  :meth:`~corrscan.match3d.analyzers.MaxScoreOverRotations.merge` over the boxes in their
  canonical order, exactly as the one-shot search does, so per-rotation statistics are added
  across boxes in the same order and rotations are numbered the same way.

The merged result is therefore bit for bit the one-shot result with the same
``target_splits``, ``batch_size`` and device (any ``rotation_chunks``).

For the job owner: :func:`prepare_search` re-implements the preparation part of
``match_template``; folding it back means splitting ``match_template`` into ``prepare_search``
+ :func:`search_task` per task + :func:`finish`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from corrscan.core.arrays import as_numpy, resolve_device
from corrscan.core.fourier import next_fast_len
from corrscan.errors import InputError
from corrscan.match3d.analyzers import MaxScoreOverRotations, MaxScoreOverRotationsConstrained
from corrscan.match3d.filters import FilterConfig, apply_filter, target_filter, template_filter
from corrscan.match3d.results import MatchResult
from corrscan.match3d.rotate import TemplateRotator
from corrscan.match3d.rotations import rotation_set
from corrscan.match3d.scores import SCORES, BoxScorer, laplace, needs_rotated_mask
from corrscan.match3d.search import _is_radial, _threads, _to_np, spherical_mask, split_boxes

__all__ = [
    "STATE_FORMAT",
    "Prepared3D",
    "finish",
    "merge_states",
    "prepare_search",
    "search_task",
    "search_tasks",
]

STATE_FORMAT = "corrscan.match3d.partial"


@dataclass
class Prepared3D:
    """Prepared inputs of a 3D search (see :func:`prepare_search`)."""

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
    pixel_size: float
    meta: dict[str, Any]
    mask: torch.Tensor = field(repr=False, default=None)  # type: ignore[assignment]
    rotator: Any = field(repr=False, default=None)
    mask_rotator: Any = field(repr=False, default=None)
    filt: torch.Tensor | None = field(repr=False, default=None)
    rots_d: torch.Tensor = field(repr=False, default=None)  # type: ignore[assignment]
    _scorers: dict[int, tuple[BoxScorer, tuple]] = field(default_factory=dict, repr=False)

    @property
    def n_rotations(self) -> int:
        """Number of rotations searched."""
        return int(self.rots.shape[0])


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
) -> Prepared3D:
    """The preparation of :func:`~corrscan.match3d.search.match_template` (same arguments,
    without ``rotation_chunks`` and ``progress``, which only change how tasks are run).

    ``fused`` (the compiled analyzer update) defaults exactly as in ``match_template``, from
    the WHOLE search (FFT box size and rotations x boxes), so tasks use the same kernels."""
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
            "given mask is not: use score='FLC' for non-spherical masks.",
            UserWarning,
            stacklevel=2,
        )
    tmask = None if target_mask is None else _to_np(target_mask, "target_mask")
    if tmask is not None and tmask.shape != tomo.shape:
        raise InputError(f"target_mask {tmask.shape} must match the tomogram {tomo.shape}")

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
            angular_step=angular_step,
            n_rotations=n_rotations,
            symmetry=symmetry,
            cone_axis=cone_axis,
            cone_angle=cone_angle,
        )
    if not torch.isfinite(rots).all():
        raise InputError("rotations contain NaN or Inf")
    seeds = None
    if constraints is not None:
        allowed = {"positions", "rotations", "cone_angle", "acceptance_radius", "reference"}
        unknown = set(constraints) - allowed
        if unknown:
            raise InputError(f"unknown constraints {sorted(unknown)}: allowed {sorted(allowed)}")
        seeds = dict(constraints)
        probe = MaxScoreOverRotationsConstrained(
            (1, 1, 1),
            positions=seeds["positions"],
            rotations=seeds.get("rotations"),
            cone_angle=seeds.get("cone_angle"),
            reference=seeds.get("reference", (0.0, 0.0, 1.0)),
        )
        keep = probe.accepted(rots.numpy()).any(axis=1)
        rots = rots[torch.from_numpy(keep)]
        if len(rots) == 0:
            raise InputError("no rotation of the set lies inside any seed's cone")

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

    if batch_size is None:
        batch_size = 1 if dev.type == "cpu" else 8
    batch_size = max(1, int(batch_size))
    if num_threads is None and dev.type == "cpu":
        biggest = max(
            math.prod(
                next_fast_len(b - a + l_ + h_) for a, b, l_, h_ in zip(st, sp, lo, hi, strict=True)
            )
            for st, sp in boxes
        )
        num_threads = 1 if biggest < 96**3 else None
    if fused is None:
        big = max(
            math.prod(
                next_fast_len(b - a + l_ + h_) for a, b, l_, h_ in zip(st, sp, lo, hi, strict=True)
            )
            for st, sp in boxes
        )
        fused = dev.type == "cpu" and big >= 96**3 and int(rots.shape[0]) * len(boxes) >= 2000
    fused = bool(fused) and batch_size == 1

    g_t = torch.from_numpy(g).to(dev)
    m_t = torch.from_numpy(mask).to(dev)
    meta = {
        "score": score,
        "n_rotations": int(rots.shape[0]),
        "angular_step": angular_step,
        "symmetry": symmetry,
        "interpolation_order": interpolation_order,
        "pad_edges": bool(pad_edges),
        "target_splits": len(boxes),
        "batch_size": batch_size,
        "fused_update": fused,
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
        pixel_size=float(pixel_size),
        meta=meta,
        mask=m_t,
        rotator=TemplateRotator(g_t, order=interpolation_order),
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


def _scorer(prep: Prepared3D, i: int) -> tuple[BoxScorer, tuple]:
    hit = prep._scorers.get(i)
    if hit is not None:
        return hit
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
        overlap_ratio=prep.overlap_ratio, defer_scale=_defer(prep),
    )  # fmt: skip
    valid = (slice(None), *(slice(l_, l_ + c) for l_, c in zip(lo, core, strict=True)))
    prep._scorers.clear()  # keep one box's FFT buffers at a time
    prep._scorers[i] = (scorer, valid)
    return scorer, valid


def _defer(prep: Prepared3D) -> bool:
    """The fused FLCSphericalMask path defers the normalisation into the analyzer update."""
    return prep.fused and prep.score == "FLCSphericalMask"


def _analyzer(prep: Prepared3D, i: int) -> MaxScoreOverRotations:
    start, stop = prep.boxes[i]
    core = tuple(b - a for a, b in zip(start, stop, strict=True))
    seeds = prep.seeds
    if seeds is not None:
        return MaxScoreOverRotationsConstrained(
            core,
            positions=seeds["positions"],
            rotations=seeds.get("rotations"),
            cone_angle=seeds.get("cone_angle"),
            reference=seeds.get("reference", (0.0, 0.0, 1.0)),
            acceptance_radius=seeds.get("acceptance_radius", 0.0),
            offset=start,
            score_threshold=prep.score_threshold,
            thread_safe=False,
        )
    return MaxScoreOverRotations(
        core, offset=start, score_threshold=prep.score_threshold, thread_safe=False
    )


def _box_state(an: MaxScoreOverRotations, n_rot: int) -> dict[str, torch.Tensor]:
    s1 = torch.zeros(n_rot, dtype=torch.float64)
    s2 = torch.zeros(n_rot, dtype=torch.float64)
    n = torch.zeros(n_rot, dtype=torch.int64)
    seen = torch.zeros(n_rot, dtype=torch.bool)
    for i, (a, b, c) in an.rotation_statistics.items():
        s1[i], s2[i], n[i], seen[i] = a, b, int(c), True
    return {
        "scores": torch.from_numpy(an.scores.copy()),
        "rotations": torch.from_numpy(an.rotations.copy()),
        "s1": s1,
        "s2": s2,
        "n": n,
        "seen": seen,
    }


def search_task(prep: Prepared3D, box: int, start: int, stop: int) -> dict[str, Any]:
    """Search rotations ``[start, stop)`` (global indices) in target box ``box``.

    Returns ``{"format", "boxes": {box: {"scores", "rotations" (global indices, -1 =
    nothing recorded), "s1", "s2", "n", "seen" (n_rotations,)}}}`` on the CPU.
    """
    if not 0 <= box < len(prep.boxes):
        raise InputError(f"box {box} outside [0, {len(prep.boxes)})")
    if not 0 <= start < stop <= prep.n_rotations:
        raise InputError(f"rotation range [{start}, {stop}) outside [0, {prep.n_rotations})")
    if start % prep.batch_size:
        raise InputError(
            f"rotation range start {start} is not a multiple of the batch size "
            f"{prep.batch_size}: use search_tasks()"
        )
    an = _analyzer(prep, box)
    an.fused = prep.fused
    dev = prep.device
    with _threads(prep.num_threads):  # the one-shot search builds its scorers inside it too
        scorer, valid = _scorer(prep, box)
        scale = scorer.scale[valid[1:]] if _defer(prep) else None
        for b0 in range(start, stop, prep.batch_size):
            b1 = min(b0 + prep.batch_size, stop)
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
            an.update(
                sc[valid].cpu() if dev.type != "cpu" else sc[valid],
                idx,
                prep.rots[b0:b1],
                scale=scale,
            )
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
    seen = a["seen"] | b["seen"]
    return {
        "scores": torch.where(take, s, c),
        "rotations": torch.where(take, r, cr),
        "s1": torch.where(b["seen"], b["s1"], a["s1"]),
        "s2": torch.where(b["seen"], b["s2"], a["s2"]),
        "n": torch.where(b["seen"], b["n"], a["n"]),
        "seen": seen,
    }


def merge_states(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Exact merge of two task states (new dict; the inputs are not modified)."""
    for st in (a, b):
        if not isinstance(st, dict) or st.get("format") != STATE_FORMAT:
            raise InputError("not a match3d partial state (format mismatch)")
    boxes = dict(a["boxes"])
    for i, box in b["boxes"].items():
        boxes[i] = _merge_box(boxes[i], box) if i in boxes else box
    return {"format": STATE_FORMAT, "boxes": boxes}


def finish(prep: Prepared3D, state: dict[str, Any], *, seconds: float | None = None) -> MatchResult:
    """The :class:`MatchResult` of a complete merged state (every task searched once)."""
    n_rot = prep.n_rotations
    boxes = state["boxes"]
    missing = [
        i for i in range(len(prep.boxes)) if i not in boxes or not bool(boxes[i]["seen"].all())
    ]
    if missing:
        raise InputError(
            f"the merged state misses rotations of boxes {missing[:5]}: some tasks are missing"
        )
    rots_np = prep.rots.numpy()
    analyzers = []
    for i, (start, _stop) in enumerate(prep.boxes):
        bx = boxes[i]
        an = MaxScoreOverRotations(
            tuple(bx["scores"].shape),
            scores=bx["scores"].numpy(),
            rotations=bx["rotations"].numpy(),
            offset=start,
            score_threshold=prep.score_threshold,
            thread_safe=False,
        )
        # register every matrix in index order, as the one-shot chunks of box 0 do
        for j in range(n_rot):
            an._matrices[j] = rots_np[j].copy()
        an._stats = {
            j: [s1, s2, int(n)]
            for j, (s1, s2, n) in enumerate(
                zip(bx["s1"].tolist(), bx["s2"].tolist(), bx["n"].tolist(), strict=True)
            )
        }
        analyzers.append(an)
    merged = MaxScoreOverRotations.merge(
        analyzers, output_shape=prep.tomogram_shape, score_threshold=prep.score_threshold
    )
    mapping = merged.rotation_mapping
    table = np.stack([mapping[i] for i in range(len(mapping))]) if mapping else np.zeros((0, 3, 3))
    meta = dict(prep.meta)
    meta["seconds"] = seconds
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
