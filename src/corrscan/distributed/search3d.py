"""3D template matching split into (target box, rotation chunk) tasks: Dask, checkpoints.

:func:`search3d` takes exactly the arguments of :func:`corrscan.match3d.match_template` plus
``workers`` / ``scheduler`` / ``client`` and ``checkpoint``. It drives the public steps of
:mod:`corrscan.match3d.search` (``prepare_search``, ``search_tasks``, ``search_task``,
``merge_states``, ``finish``), which ``match_template`` itself is built from: each task
returns the exact state of one (box, rotation range) (score map and GLOBAL rotation indices of
the box, and its per-rotation statistics); ``finish`` merges the boxes in the one-shot order.
The result equals ``match_template`` with the same ``target_splits``,
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
import pandas as pd

from corrscan.core.arrays import as_numpy
from corrscan.core.checkpoint import Checkpoint, fingerprint
from corrscan.distributed.resume import (
    checkpoint_path_for,
    client_for,
    load_progress,
    run_tasks,
)
from corrscan.errors import InputError, ResultExistsError
from corrscan.match3d import search as _search
from corrscan.match3d.filters import FilterConfig
from corrscan.match3d.results import MatchResult

__all__ = ["batch_search3d", "read_pair", "run_search3d", "search3d", "search_fingerprint3d"]

_PREP_CACHE: dict[str, _search.Prepared3D] = {}

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


def _prepare(kwargs: dict[str, Any]) -> _search.Prepared3D:
    """``prepare_search`` for tasks: each runs on its caller's thread (``workers=1``)."""
    return _search.prepare_search(**kwargs, workers=1)


def _prepared(search_key: str, kwargs: dict[str, Any]) -> _search.Prepared3D:
    prep = _PREP_CACHE.get(search_key)
    if prep is None:
        _PREP_CACHE.clear()
        prep = _prepare(kwargs)
        _PREP_CACHE[search_key] = prep
    return prep


def _task(task: tuple[int, int, int], *, kwargs: dict[str, Any], search_key: str) -> dict:
    prep = _prepared(search_key, kwargs)
    return _search.search_task(prep, int(task[0]), int(task[1]), int(task[2]))


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
    fused: bool | None = None,
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
        "fused": fused,
    }
    key = search_fingerprint3d(kwargs)
    ckpt = (
        None
        if checkpoint is None
        else Checkpoint(checkpoint, key, interval_s=checkpoint_interval_s)
    )
    saved = load_progress(ckpt, required=("chunks",))
    prep = _prepare(kwargs)
    with client_for(client, workers, scheduler) as cl:
        if saved is not None:
            tasks = list(saved["chunks"])
        else:
            nc = rotation_chunks
            if nc is None and cl is not None:
                n_workers = len(cl.scheduler_info().get("workers", {})) or (workers or 1)
                nc = math.ceil(4 * n_workers / len(prep.boxes))
            nc = min(nc or 1, prep.n_rotations)
            tasks = _search.search_tasks(prep, rotation_chunks=nc)
        if not tasks:
            raise InputError("the search space is empty (no rotations or no target boxes)")
        if cl is None:
            _PREP_CACHE.clear()
            _PREP_CACHE[key] = prep
        state = run_tasks(
            tasks,
            _task,
            _search.merge_states,
            shared={"kwargs": kwargs, "search_key": key},
            client=cl,
            checkpoint=ckpt,
            extra={"chunks": [list(t) for t in tasks]},
            on_task=on_chunk,
            description="match3d tasks",
            progress=progress,
        )
    res = _search.finish(prep, state, seconds=time.perf_counter() - t0)
    n_chunks = len({(a, b) for _, a, b in tasks})
    res.metadata["rotation_chunks"] = n_chunks
    res.metadata["distributed"] = {
        "n_tasks": len(tasks),
        "workers": workers,
        "scheduler": scheduler,
        "resumed": saved is not None,
    }
    return res


def read_pair(
    tomogram: str | Path, template: str | Path, pixel_size: float | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Tomogram and template as float32 arrays and the voxel size (Å) they share.

    The voxel sizes in the two headers must agree within 0.1 % (else :class:`InputError`
    naming both files); ``pixel_size`` overrides the headers (for files without one).
    """
    from corrscan.core.io import read_image

    tomo, vs_t = read_image(tomogram)
    tmpl, vs_g = read_image(template)
    tomo = np.asarray(tomo, dtype=np.float32)
    tmpl = np.asarray(tmpl, dtype=np.float32)
    if pixel_size is None:
        if vs_t and vs_g and abs(vs_t - vs_g) > 1e-3 * max(vs_t, vs_g):
            raise InputError(
                f"voxel sizes differ: {tomogram} has {vs_t:.4g} Å, {template} has {vs_g:.4g} Å; "
                "resample the template to the tomogram's voxel size (or pass pixel_size if a "
                "header is wrong)"
            )
        pixel_size = float(vs_t or vs_g or 1.0)
    return tomo, tmpl, float(pixel_size)


def run_search3d(
    tomogram: Any,
    template: Any,
    output: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = True,
    checkpoint_interval_s: float = 60.0,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    progress: bool | None = None,
    **search_kwargs: Any,
) -> MatchResult:
    """Search and write the result bundle, with a checkpoint next to it.

    ``tomogram`` / ``template`` are arrays or file paths (:func:`read_pair` checks that their
    voxel sizes agree); ``search_kwargs`` are those of :func:`search3d`. A finished bundle at
    ``output`` raises :class:`ResultExistsError` before any work unless ``overwrite``. The
    checkpoint ``<output>.checkpoint.pt`` is resumed when ``resume`` (else deleted first) and
    removed once the bundle is written.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise ResultExistsError(
            f"{output} already exists: pass --overwrite to replace it or choose another output"
        )
    if isinstance(tomogram, (str, Path)) and isinstance(template, (str, Path)):
        tomogram, template, ps = read_pair(tomogram, template, search_kwargs.get("pixel_size"))
        search_kwargs["pixel_size"] = ps
    output.parent.mkdir(parents=True, exist_ok=True)
    ck = checkpoint_path_for(output)
    if not resume:
        ck.unlink(missing_ok=True)
    res = search3d(
        tomogram, template, workers=workers, scheduler=scheduler, client=client, checkpoint=ck,
        checkpoint_interval_s=checkpoint_interval_s, progress=progress, **search_kwargs,
    )  # fmt: skip
    res.write(output, overwrite=overwrite)
    ck.unlink(missing_ok=True)
    return res


def batch_search3d(
    inputs: str | Path | list[str | Path],
    template: str | Path,
    out_dir: str | Path,
    *,
    skip_done: bool = True,
    stop_on_error: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    resume: bool = True,
    checkpoint_interval_s: float = 60.0,
    progress: bool | None = None,
    **search_kwargs: Any,
) -> pd.DataFrame:
    """Search many tomograms (glob, CSV or STAR list) for one template; one summary table.

    Each tomogram's bundle is ``out_dir / <tomogram stem>``; finished ones are skipped
    (status ``skipped``), interrupted ones resume from their checkpoint; ``summary.csv`` has
    one row per input (status, error, seconds, rotations, best score, score mean/std).
    """
    from corrscan.distributed.batch import list_inputs, run_batch

    paths = list_inputs(inputs)
    with client_for(client, workers, scheduler) as cl:

        def run_one(src: Path, dest: Path) -> dict[str, Any]:
            res = run_search3d(
                src, template, dest, client=cl, resume=resume,
                checkpoint_interval_s=checkpoint_interval_s, progress=progress,
                **search_kwargs,
            )  # fmt: skip
            return {
                "n_rotations": res.n_rotations,
                "max_score": float(np.max(res.scores)),
                "score_mean": res.score_mean,
                "score_std": res.score_std,
            }

        return run_batch(paths, run_one, out_dir, skip_done=skip_done, stop_on_error=stop_on_error)
