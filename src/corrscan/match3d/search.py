"""``match_template``: exhaustive 3D template matching of a tomogram, split and merged.

The search space is cut into (target box, rotation chunk) tasks; every task fills a
:class:`~corrscan.match3d.analyzers.MaxScoreOverRotations` at its offset and
:meth:`MaxScoreOverRotations.merge` combines them. Rotation chunks start at multiples of the
batch size, so a chunked search runs exactly the same batches as the one-shot search and the
merged maps are bitwise identical. Target boxes are padded by the template half-widths with
the real neighbouring voxels (mirror padding at the tomogram border), so every reported voxel
sees the same data as in the one-shot padded search (equal up to FFT rounding of the
different box sizes).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from corrscan.core.arrays import as_numpy, check_finite, free_memory_bytes, resolve_device
from corrscan.core.fourier import next_fast_len
from corrscan.core.progress import track
from corrscan.errors import InputError
from corrscan.match3d.analyzers import MaxScoreOverRotations, MaxScoreOverRotationsConstrained
from corrscan.match3d.filters import FilterConfig, apply_filter, target_filter, template_filter
from corrscan.match3d.results import MatchResult
from corrscan.match3d.rotate import TemplateRotator
from corrscan.match3d.rotations import rotation_set
from corrscan.match3d.scores import SCORES, BoxScorer, laplace, needs_rotated_mask

__all__ = ["match_template", "spherical_mask", "split_boxes"]


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


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _to_np(x: Any, name: str) -> np.ndarray:
    a = np.asarray(as_numpy(x), dtype=np.float32)
    if a.ndim != 3 or min(a.shape) < 1:
        raise InputError(f"{name} must be a 3D (z, y, x) array, got shape {a.shape}")
    check_finite(a, name)
    return a


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
        Rotations per FFT call (default 1 on CPU, where caches favour single transforms;
        planned from free memory on a GPU).
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
        machine. Results are identical to ``workers=1``. Default: for CPU boxes of at least
        ``96^3`` voxels with ``num_threads`` unset, torch's thread count (as memory allows),
        else 1.
    fused
        Fuse normalisation, max/argmax update and statistics into one ``torch.compile``d
        kernel (one pass over the score map instead of about six). Default: on for CPU
        searches with FFT boxes of at least ``96^3`` voxels and at least 2000 rotation-boxes
        (compiling costs seconds to a minute once per shape; then cached on disk by torch).

    Returns
    -------
    MatchResult
        Maps ``scores`` / ``rotation_index`` ``(D, H, W)``, the rotation table, statistics.
    """
    t_start = time.perf_counter()
    if score not in SCORES:
        raise InputError(f"unknown score {score!r}: choose one of {', '.join(SCORES)}")
    if interpolation_order not in (1, 3):
        raise InputError(f"interpolation_order must be 1 or 3, got {interpolation_order}")
    if rotation_chunks < 1:
        raise InputError(f"rotation_chunks must be >= 1, got {rotation_chunks}")
    if not pixel_size > 0:
        raise InputError(f"pixel_size must be > 0 Å, got {pixel_size}")
    dev = resolve_device(device)
    fcfg = (
        FilterConfig()
        if filters is None
        else (
            filters if isinstance(filters, FilterConfig) else FilterConfig.from_dict(dict(filters))
        )
    )
    tomo = _to_np(tomogram, "tomogram")
    tmpl = _to_np(template, "template")
    if any(s > t for s, t in zip(tmpl.shape, tomo.shape, strict=True)):
        raise InputError(
            f"template {tmpl.shape} is larger than the tomogram {tomo.shape} on some axis: "
            "crop the template or use a larger tomogram"
        )
    mask = (
        spherical_mask(tmpl.shape)
        if template_mask is None
        else _to_np(template_mask, "template_mask")
    )
    if mask.shape != tmpl.shape:
        raise InputError(f"template_mask {mask.shape} must match the template {tmpl.shape}")
    if score == "FLCSphericalMask" and not _is_radial(mask):
        warnings.warn(
            "FLCSphericalMask assumes a rotation-invariant (spherical) template mask, but the "
            "given mask is not: the local normalisation is wrong for rotated templates. Use "
            "score='FLC' (mask rotated per rotation) for non-spherical masks.",
            UserWarning,
            stacklevel=2,
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
            raise InputError(f"rotations must be (n, 3, 3), got {tuple(rots.shape)}")
    else:
        rots = rotation_set(
            angular_step=angular_step, n_rotations=n_rotations, symmetry=symmetry,
            cone_axis=cone_axis, cone_angle=cone_angle,
        )  # fmt: skip
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

    if batch_size is None:
        batch_size = 1 if dev.type == "cpu" else 8
    batch_size = max(1, int(batch_size))
    chunk_len = math.ceil(math.ceil(n_rot / rotation_chunks) / batch_size) * batch_size
    chunks = [(s, min(s + chunk_len, n_rot)) for s in range(0, n_rot, chunk_len)]

    g_t = torch.from_numpy(g).to(dev)
    m_t = torch.from_numpy(mask).to(dev)
    rotator = TemplateRotator(g_t, order=interpolation_order)
    mask_rotator = TemplateRotator(m_t, order=1) if needs_rotated_mask(score) else None
    filt_d = None if filt is None else filt.to(dev)
    rots_d = rots.to(dev)

    analyzers: list[MaxScoreOverRotations] = []
    n_batches = sum(math.ceil((b - a) / batch_size) for a, b in chunks) * len(boxes)
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
        fused = dev.type == "cpu" and big >= 96**3 and n_rot * len(boxes) >= 2000
    # (the compiled kernel is not shared between worker threads)
    fused = bool(fused) and batch_size == 1 and n_workers == 1
    defer = fused and score == "FLCSphericalMask"
    with _threads(num_threads):
        bar = track(
            range(n_batches),
            total=n_batches * batch_size,
            description="match3d",
            unit="rot",
            scale=batch_size,
            enabled=progress,
        )
        tick = iter(bar)
        for start, stop in boxes:
            core = tuple(b - a for a, b in zip(start, stop, strict=True))
            sl = tuple(
                slice(a, b + l_ + h_) for a, b, l_, h_ in zip(start, stop, lo, hi, strict=True)
            )
            box = torch.from_numpy(np.ascontiguousarray(f_pad[sl])).to(dev)
            tbox = (
                None if t_pad is None else torch.from_numpy(np.ascontiguousarray(t_pad[sl])).to(dev)
            )
            fft_shape = tuple(next_fast_len(s) for s in box.shape)
            scorer = BoxScorer(
                box,
                tuple(tmpl.shape),
                m_t,
                tbox,
                score,
                fft_shape,
                batch_size,
                overlap_ratio=overlap_ratio,
                defer_scale=defer,
            )
            valid = (slice(None), *tuple(slice(l_, l_ + c) for l_, c in zip(lo, core, strict=True)))
            scale = scorer.scale[valid[1:]] if defer else None

            def new_analyzer(start=start, core=core) -> MaxScoreOverRotations:
                if seeds is not None:
                    an: MaxScoreOverRotations = MaxScoreOverRotationsConstrained(
                        core, positions=seeds["positions"], rotations=seeds.get("rotations"),
                        cone_angle=seeds.get("cone_angle"),
                        reference=seeds.get("reference", (0.0, 0.0, 1.0)),
                        acceptance_radius=seeds.get("acceptance_radius", 0.0), offset=start,
                        score_threshold=score_threshold, thread_safe=False,
                    )  # fmt: skip
                else:
                    an = MaxScoreOverRotations(
                        core, offset=start, score_threshold=score_threshold, thread_safe=False
                    )
                an.fused = fused
                return an.to(dev) if dev.type != "cpu" else an

            def run(c0: int, c1: int, sc_: BoxScorer, valid=valid, scale=scale, tick_=None):
                if tick_ is None:  # worker thread: OpenMP/MKL thread counts are per thread
                    torch.set_num_threads(1)
                an = new_analyzer()
                for b0 in range(c0, c1, batch_size):
                    b1 = min(b0 + batch_size, c1)
                    r = rots_d[b0:b1]
                    gr = apply_filter(rotator(r), filt_d)
                    if mask_rotator is not None:
                        mr = mask_rotator(r)
                    elif score == "FLCSphericalMask":
                        mr = m_t[None]
                    else:
                        mr = None
                    sc = sc_(gr, mr)
                    idx = torch.arange(b0, b1, dtype=torch.int32)
                    an.update(
                        sc[valid],
                        idx,
                        rots[b0:b1],
                        scale=scale,
                    )
                    if tick_ is not None:
                        next(tick_, None)
                return an

            if n_workers == 1:
                for c0, c1 in chunks:
                    analyzers.append(run(c0, c1, scorer, tick_=tick))
            else:
                # rotation-parallel threads (torch ops release the GIL), one buffer set each;
                # sub-ranges start at multiples of the batch size, so the merge is exact
                tasks = []
                for c0, c1 in chunks:
                    per = math.ceil(math.ceil((c1 - c0) / n_workers) / batch_size) * batch_size
                    tasks += [(a, min(a + per, c1)) for a in range(c0, c1, per)]
                forks = [scorer] + [scorer.fork() for _ in range(min(n_workers, len(tasks)) - 1)]
                with ThreadPoolExecutor(max_workers=len(forks)) as pool:
                    futures = [
                        pool.submit(run, a, b, forks[i % len(forks)])
                        for i, (a, b) in enumerate(tasks)
                    ]
                    for fut, (a, b) in zip(futures, tasks, strict=True):
                        analyzers.append(fut.result())
                        for _ in range(math.ceil((b - a) / batch_size)):
                            next(tick, None)
        for _ in tick:
            pass
    merged = MaxScoreOverRotations.merge(
        analyzers, output_shape=tomo.shape, score_threshold=score_threshold
    )
    elapsed = time.perf_counter() - t_start
    mapping = merged.rotation_mapping
    table = np.stack([mapping[i] for i in range(len(mapping))]) if mapping else np.zeros((0, 3, 3))
    meta = {
        "score": score,
        "n_rotations": n_rot,
        "angular_step": angular_step,
        "symmetry": symmetry,
        "interpolation_order": interpolation_order,
        "pad_edges": bool(pad_edges),
        "target_splits": len(boxes),
        "rotation_chunks": len(chunks),
        "batch_size": batch_size,
        "fused_update": fused,
        "workers": n_workers,
        "template_shape": list(tmpl.shape),
        "tomogram_shape": list(tomo.shape),
        "filters": fcfg.model_dump(mode="json"),
        "device": str(dev),
        "seconds": elapsed,
        "rotations_per_second": n_rot * len(boxes) / elapsed if elapsed > 0 else None,
    }
    return MatchResult(
        scores=merged.scores.copy(),
        rotation_index=merged.rotations.copy(),
        rotations=table.astype(np.float32),
        pixel_size=float(pixel_size),
        score_mean=merged.score_mean,
        score_std=merged.score_std,
        score_count=merged.score_count,
        template_shape=tuple(tmpl.shape),
        metadata=meta,
    )
