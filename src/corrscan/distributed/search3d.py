"""3D template matching split into (target box, rotation chunk) tasks: Dask, checkpoints.

:func:`search3d` takes exactly the arguments of :func:`corrscan.match3d.match_template` plus
``workers`` / ``scheduler`` / ``client`` and ``checkpoint``. Each task returns the exact state
of :mod:`corrscan.match3d.chunks` (score map and GLOBAL rotation indices of one box, and that
box's per-rotation statistics); :func:`~corrscan.match3d.chunks.finish` merges the boxes in the
one-shot order. The result equals ``match_template`` with the same ``target_splits``,
``batch_size`` and device bit for bit, for any ``rotation_chunks``, worker count, completion
order or interruption.

The CLI (``corrscan match3d search ... --workers N | --scheduler ADDRESS``) calls
:func:`search3d` with ``checkpoint=checkpoint_path_for(output)`` and removes the checkpoint
after the bundle is written (see ``docs/distributed.md``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from corrscan.core.arrays import as_numpy
from corrscan.core.checkpoint import Checkpoint, fingerprint
from corrscan.distributed.resume import client_for, load_progress, run_tasks
from corrscan.errors import InputError
from corrscan.match3d import chunks as _chunks
from corrscan.match3d.filters import FilterConfig
from corrscan.match3d.results import MatchResult

__all__ = ["search3d", "search_fingerprint3d"]

_PREP_CACHE: dict[str, _chunks.Prepared3D] = {}

_ARRAYS = ("tomogram", "template", "template_mask", "target_mask", "rotations")


def _plain(kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """Split arguments into JSON-able values and arrays (for the fingerprint)."""
    plain: dict[str, Any] = {}
    arrays: list[Any] = []
    for k, v in sorted(kwargs.items()):
        if k in _ARRAYS or k == "constraints":
            continue
        if isinstance(v, FilterConfig):
            v = v.model_dump(mode="json")
        plain[k] = v
    for k in _ARRAYS:
        v = kwargs.get(k)
        arrays.append(k)
        arrays.append("none" if v is None else np.asarray(as_numpy(v)))
    cons = kwargs.get("constraints")
    if cons is not None:
        for k in sorted(cons):
            v = cons[k]
            arrays.append(f"constraints.{k}")
            arrays.append(v if isinstance(v, (int, float, str, type(None))) else np.asarray(v))
    return plain, arrays


def search_fingerprint3d(kwargs: dict[str, Any]) -> str:
    """Identity of a 3D search (data, rotations and every setting) for checkpoints."""
    plain, arrays = _plain(kwargs)
    return fingerprint("match3d", plain, *arrays)


def _prepared(search_key: str, kwargs: dict[str, Any]) -> _chunks.Prepared3D:
    prep = _PREP_CACHE.get(search_key)
    if prep is None:
        _PREP_CACHE.clear()
        prep = _chunks.prepare_search(**kwargs)
        _PREP_CACHE[search_key] = prep
    return prep


def _task(task: tuple[int, int, int], *, kwargs: dict[str, Any], search_key: str) -> dict:
    prep = _prepared(search_key, kwargs)
    return _chunks.search_task(prep, int(task[0]), int(task[1]), int(task[2]))


def search3d(
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
    rotation_chunks: int | None = None,
    pad_edges: bool | None = None,
    batch_size: int | None = None,
    constraints: Mapping[str, Any] | None = None,
    score_threshold: float = -math.inf,
    overlap_ratio: float = 0.3,
    device: str | None = "cpu",
    num_threads: int | None = None,
    progress: bool | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    checkpoint: str | Path | None = None,
    checkpoint_interval_s: float = 60.0,
    on_chunk: Callable[[Any, int], None] | None = None,
) -> MatchResult:
    """:func:`~corrscan.match3d.match_template` as (box, rotation chunk) tasks.

    Parameters
    ----------
    tomogram ... num_threads
        As for :func:`corrscan.match3d.match_template`.
    rotation_chunks
        Rotation chunks per box (rounded to whole batches). Default: 1 in-process, else
        ``ceil(4 x workers / boxes)`` so every worker gets several tasks.
    progress
        Progress bar over tasks.
    workers, scheduler, client
        A new loopback ``LocalCluster`` of ``workers`` processes, an existing scheduler
        address, or an existing client; none: in-process.
    checkpoint, checkpoint_interval_s
        Progress file (atomic, fingerprinted; saved at most every ``checkpoint_interval_s``
        seconds and at the end); an existing one of the same search is resumed with the
        chunks it was started with. Remove it once the result is written.
    on_chunk
        ``on_chunk(task, n_done)`` after each in-process task (tests interrupt runs with it).

    Returns
    -------
    MatchResult
        Equal bit for bit to ``match_template`` with the same ``target_splits``,
        ``batch_size`` and device.
    """
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {
        "tomogram": tomogram,
        "template": template,
        "template_mask": template_mask,
        "target_mask": target_mask,
        "score": score,
        "angular_step": angular_step,
        "n_rotations": n_rotations,
        "rotations": rotations,
        "symmetry": symmetry,
        "cone_axis": cone_axis,
        "cone_angle": cone_angle,
        "interpolation_order": interpolation_order,
        "filters": filters,
        "pixel_size": pixel_size,
        "target_splits": target_splits,
        "pad_edges": pad_edges,
        "batch_size": batch_size,
        "constraints": constraints,
        "score_threshold": score_threshold,
        "overlap_ratio": overlap_ratio,
        "device": device,
        "num_threads": num_threads,
    }
    key = search_fingerprint3d(kwargs)
    ckpt = (
        None
        if checkpoint is None
        else Checkpoint(checkpoint, key, interval_s=checkpoint_interval_s)
    )
    saved = load_progress(ckpt)
    prep = _chunks.prepare_search(**kwargs)
    with client_for(client, workers, scheduler) as cl:
        if saved is not None:
            tasks = [tuple(int(v) for v in t) for t in saved["chunks"]]
        else:
            nc = rotation_chunks
            if nc is None and cl is not None:
                n_workers = len(cl.scheduler_info().get("workers", {})) or (workers or 1)
                nc = math.ceil(4 * n_workers / len(prep.boxes))
            nc = min(nc or 1, prep.n_rotations)
            tasks = _chunks.search_tasks(prep, rotation_chunks=nc)
        if not tasks:
            raise InputError("the search space is empty (no rotations or no target boxes)")
        if cl is None:
            _PREP_CACHE.clear()
            _PREP_CACHE[key] = prep
        state = run_tasks(
            tasks,
            _task,
            _chunks.merge_states,
            shared={"kwargs": kwargs, "search_key": key},
            client=cl,
            checkpoint=ckpt,
            extra={"chunks": [list(t) for t in tasks]},
            on_task=on_chunk,
            description="match3d tasks",
            progress=progress,
        )
    res = _chunks.finish(prep, state, seconds=time.perf_counter() - t0)
    n_chunks = len({(a, b) for _, a, b in tasks})
    res.metadata["rotation_chunks"] = n_chunks
    res.metadata["distributed"] = {
        "n_tasks": len(tasks),
        "workers": workers,
        "scheduler": scheduler,
        "resumed": saved is not None,
    }
    return res
