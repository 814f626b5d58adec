"""2D template matching split into orientation chunks: Dask workers, checkpoints, resume.

:func:`search2d` is :func:`corrscan.match2d.match_template` cut into tasks of orientation
ranges (GLOBAL indices, aligned to the orientation batch). Each task runs
:func:`corrscan.match2d.search.search_chunk` (the function ``match_template`` itself runs over
all orientations) on a :func:`~corrscan.match2d.search.prepare_search` cached per worker
process; states merge exactly (:func:`~corrscan.match2d.search.merge_states`), so the result
is bit for bit the in-process ``match_template`` result **with the same**
``orientation_batch_size`` (the batch is the unit of the float32 batch sums; chunk boundaries
are multiples of it) on the same kind of device. On the CPU the job runs torch single-threaded
in its preparation and workers, so the bits do not depend on the torch thread count of the
caller or of the Dask workers.

:func:`run_search2d` is the file-to-file step the CLI runs (``corrscan match2d search CONFIG
--workers N | --scheduler ADDRESS``): it reads the inputs, searches with a checkpoint next to
the output bundle (``<bundle>.checkpoint.pt``), picks particles and writes the bundle
atomically; a killed run restarted with the same command continues from the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from corrscan.core.checkpoint import Checkpoint, fingerprint
from corrscan.distributed.batch import bundle_is_complete
from corrscan.distributed.resume import checkpoint_path_for, client_for, load_progress, run_tasks
from corrscan.errors import InputError, ResultExistsError
from corrscan.match2d import search as _search
from corrscan.match2d.config import (
    ComputeConfig,
    DefocusSearchConfig,
    MatchTemplateConfig,
    OpticsGroup,
    OrientationSearchConfig,
    PreprocessingFilters,
)
from corrscan.match2d.result import MatchTemplateResult

__all__ = [
    "batch_search2d",
    "checkpoint_path_for",
    "run_search2d",
    "search2d",
    "search_fingerprint2d",
]

# one prepared search per worker process (keyed by the search fingerprint)
_PREP_CACHE: dict[str, _search.PreparedSearch] = {}


def _model(value: Any, cls: type, name: str) -> Any:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.from_dict(value, source=name)
    raise InputError(f"{name} must be a {cls.__name__} or a dict, got {type(value).__name__}")


def _kwargs(
    optics: Any,
    defocus_search: Any,
    orientation_search: Any,
    preprocessing: Any,
    compute: Any,
    valid_crop: bool,
    resolution_limit: float | None,
) -> dict[str, Any]:
    """Plain-data arguments of ``prepare_search`` (picklable, hashable as JSON)."""
    return {
        "optics": _model(optics, OpticsGroup, "optics").model_dump(mode="json"),
        "defocus_search": _model(defocus_search, DefocusSearchConfig, "defocus_search").model_dump(
            mode="json"
        ),
        "orientation_search": _model(
            orientation_search, OrientationSearchConfig, "orientation_search"
        ).model_dump(mode="json"),
        "preprocessing": _model(preprocessing, PreprocessingFilters, "preprocessing").model_dump(
            mode="json"
        ),
        "compute": _model(compute, ComputeConfig, "compute").model_dump(mode="json"),
        "valid_crop": bool(valid_crop),
        "resolution_limit": resolution_limit,
    }


def search_fingerprint2d(
    micrograph: Any, template: Any, orientations: Any, kwargs: dict[str, Any]
) -> str:
    """Identity of a 2D search for checkpoints: data, orientations and every setting that
    changes the result bits (the batch size is stored in the checkpoint instead, and thread
    counts do not change results)."""
    comp = dict(kwargs["compute"])
    comp.pop("orientation_batch_size", None)
    comp.pop("num_threads", None)
    ident = {**kwargs, "compute": comp}
    parts: list[Any] = ["match2d", ident, micrograph, template]
    if orientations is not None:
        parts.append(orientations)
    return fingerprint(*parts)


def _prepared(
    key: str, micrograph: Any, template: Any, orientations: Any, kwargs: dict[str, Any]
) -> _search.PreparedSearch:
    prep = _PREP_CACHE.get(key)
    if prep is None:
        _PREP_CACHE.clear()
        prep = _search.prepare_search(micrograph, template, orientations=orientations, **kwargs)
        _PREP_CACHE[key] = prep
    return prep


def _task(
    task: tuple[int, int],
    *,
    micrograph: Any,
    template: Any,
    orientations: Any,
    kwargs: dict[str, Any],
    search_key: str,
) -> dict[str, Any]:
    prep = _prepared(search_key, micrograph, template, orientations, kwargs)
    return _search.search_chunk(prep, int(task[0]), int(task[1]))


def search2d(
    micrograph: Any,
    template: Any,
    *,
    optics: OpticsGroup | dict,
    defocus_search: DefocusSearchConfig | dict | None = None,
    orientation_search: OrientationSearchConfig | dict | None = None,
    orientations: Any = None,
    preprocessing: PreprocessingFilters | dict | None = None,
    compute: ComputeConfig | dict | None = None,
    valid_crop: bool = True,
    resolution_limit: float | None = None,
    config: dict | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    chunk_size: int | None = None,
    n_chunks: int | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_interval_s: float = 60.0,
    progress: bool | None = None,
    on_chunk: Callable[[Any, int], None] | None = None,
) -> MatchTemplateResult:
    """:func:`~corrscan.match2d.match_template` as chunked tasks, in-process or on Dask.

    Parameters
    ----------
    micrograph, template, optics, defocus_search, orientation_search, orientations,
    preprocessing, compute, valid_crop, resolution_limit, config
        As for :func:`corrscan.match2d.match_template` (``config`` is stored in the metadata).
    workers
        Run on a new loopback ``LocalCluster`` of this many single-threaded worker processes.
    scheduler
        Or on an existing Dask scheduler (``tcp://host:8786``); workers must see the same
        Python environment. Inputs are scattered from this process.
    client
        Or on an existing ``dask.distributed.Client``. With none of the three: in-process.
    chunk_size, n_chunks
        Orientations per task (rounded up to a multiple of the orientation batch), or the
        number of tasks. Default: ``n_chunks = 4 x workers`` on a cluster, one batch per
        chunk in-process.
    checkpoint
        Checkpoint file (``.pt``): progress (merged state + finished chunks + batch size +
        chunk list) is saved atomically at most every ``checkpoint_interval_s`` seconds and at
        the end; an existing checkpoint of the same search is resumed. The caller removes it
        once the result is safely written (:func:`run_search2d` does).
    progress
        Progress bar over chunks.
    on_chunk
        ``on_chunk(task, n_done)`` after every in-process chunk (tests interrupt runs with it).

    Returns
    -------
    MatchTemplateResult
        Equal bit for bit to ``match_template(..., compute={..., "orientation_batch_size":
        result.metadata["orientation_batch_size"]})`` on the same device kind.
    """
    kwargs = _kwargs(
        optics, defocus_search, orientation_search, preprocessing, compute, valid_crop,
        resolution_limit,
    )  # fmt: skip
    key = search_fingerprint2d(micrograph, template, orientations, kwargs)
    ckpt = (
        None
        if checkpoint is None
        else Checkpoint(checkpoint, key, interval_s=checkpoint_interval_s)
    )
    saved = load_progress(ckpt, required=("batch", "chunks"))
    if saved is not None:  # the resumed run uses the batches and chunks of the first run
        kwargs["compute"] = {**kwargs["compute"], "orientation_batch_size": int(saved["batch"])}
    prep = _search.prepare_search(micrograph, template, orientations=orientations, **kwargs)
    kwargs["compute"] = {**kwargs["compute"], "orientation_batch_size": prep.batch}
    cache_key = f"{key}:batch={prep.batch}"  # a worker's cached preparation matches the batch
    with client_for(client, workers, scheduler) as cl:
        if saved is not None:
            tasks = list(saved["chunks"])
        else:
            nc = n_chunks
            if nc is None and chunk_size is None and cl is not None:
                n_workers = max(1, len(cl.scheduler_info().get("workers", {})) or (workers or 1))
                nc = 4 * n_workers
            tasks = _search.orientation_chunks(prep.n_orient, prep.batch, chunk_size, nc)
        if cl is None:
            _PREP_CACHE.clear()
            _PREP_CACHE[cache_key] = prep
        state = run_tasks(
            tasks,
            _task,
            _search.merge_states,
            shared={
                "micrograph": micrograph,
                "template": template,
                "orientations": orientations,
                "kwargs": kwargs,
                "search_key": cache_key,
            },
            client=cl,
            checkpoint=ckpt,
            extra={"batch": prep.batch, "chunks": [list(t) for t in tasks]},
            on_task=on_chunk,
            description="match2d chunks",
            progress=progress,
        )
    result = _search.finish(prep, state)
    result.metadata.update(
        {
            "distributed": {
                "n_chunks": len(tasks),
                "workers": workers,
                "scheduler": scheduler,
                "resumed": saved is not None,
            },
            "config": config if config is not None else kwargs,
        }
    )
    return result


def run_search2d(
    cfg: MatchTemplateConfig,
    *,
    out: str | Path | None = None,
    overwrite: bool | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    resume: bool = True,
    checkpoint_interval_s: float = 60.0,
    progress: bool | None = None,
    config_dict: dict[str, Any] | None = None,
) -> tuple[MatchTemplateResult, pd.DataFrame, Path]:
    """:func:`corrscan.match2d.pipeline.run_search` with workers, checkpoints and resume.

    A finished bundle at the output path raises :class:`ResultExistsError` before any work
    unless ``overwrite``. The checkpoint ``<bundle>.checkpoint.pt`` is resumed when
    ``resume`` (else deleted first) and removed once the bundle is written.
    """
    from corrscan.match2d.pipeline import read_inputs, save_search, search_kwargs

    path = Path(out or cfg.output.bundle_path)
    ow = cfg.output.overwrite if overwrite is None else overwrite
    if path.exists() and not ow:
        what = "a finished result" if bundle_is_complete(path) else "a file or folder"
        raise ResultExistsError(
            f"{path} already exists ({what}): pass --overwrite to replace it or choose another "
            "output"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    ck = checkpoint_path_for(path)
    if not resume:
        ck.unlink(missing_ok=True)
    img, vol = read_inputs(cfg)
    res = search2d(
        img,
        vol,
        **search_kwargs(cfg, config_dict),
        workers=workers,
        scheduler=scheduler,
        client=client,
        checkpoint=ck,
        checkpoint_interval_s=checkpoint_interval_s,
        progress=progress,
    )
    parts = save_search(res, cfg, path, overwrite=ow)
    Checkpoint(ck, "").remove()
    return res, parts, path


def batch_search2d(
    cfg: MatchTemplateConfig,
    inputs: str | Path | list[str | Path],
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
) -> pd.DataFrame:
    """Search many micrographs with one configuration; one bundle each, one summary table.

    Parameters
    ----------
    cfg
        The configuration; its ``micrograph_path`` is replaced by each input and its
        ``output.bundle_path`` by ``out_dir / <micrograph stem>``.
    inputs
        Glob pattern, CSV or STAR list, or explicit paths
        (:func:`corrscan.distributed.batch.list_inputs`).
    out_dir
        Folder of the bundles and of ``summary.csv`` (one row per input: status
        ``done``/``skipped``/``failed``, error message, seconds, particles, best z-score).
    skip_done
        Skip inputs whose bundle is complete; an interrupted input resumes from its checkpoint.
    workers, scheduler, client
        One cluster for the whole batch (each micrograph's orientation chunks run on it).
    """
    from corrscan.distributed.batch import list_inputs, run_batch

    paths = list_inputs(inputs)
    with client_for(client, workers, scheduler) as cl:

        def run_one(src: Path, dest: Path) -> dict[str, Any]:
            one = cfg.model_copy(
                update={
                    "micrograph_path": str(src),
                    "output": cfg.output.model_copy(
                        update={"bundle_path": str(dest), "particles_csv": None,
                                "particles_star": None}
                    ),
                }
            )  # fmt: skip
            res, parts, _ = run_search2d(
                one, client=cl, resume=resume, checkpoint_interval_s=checkpoint_interval_s,
                progress=progress,
            )  # fmt: skip
            return {
                "n_particles": len(parts),
                "max_zscore": float(res.maps["scaled_mip"].max()),
                "total_correlations": res.total_correlations,
            }

        return run_batch(paths, run_one, out_dir, skip_done=skip_done, stop_on_error=stop_on_error)
