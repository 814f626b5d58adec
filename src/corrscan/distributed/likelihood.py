"""Likelihood searches split into (image range x template range) tasks: Dask, checkpoints.

:func:`likelihood_search` is :func:`corrscan.likelihood.search` cut into tasks. A task runs the
public :func:`~corrscan.likelihood.kernel.search` on a slice of the images and a slice of the
templates (both slices start at multiples of the batch sizes, so every task runs exactly the
GEMM batches of the one-shot search) and returns a plain state:

* per (image range, template range) block: every output that is indexed by image and template
  (cross-correlations and pose fields of the levels ``full``, ``displacement``, ``rotation``,
  ``displacement_rotation``; ``log_likelihood_ms``; ``log_likelihood_full``), placed into the
  full arrays at the end;
* per image range (level ``pose``): the best pose over the task's templates (GLOBAL template
  index), its cross-correlation and its optimal-pose log-likelihood. Merging keeps the larger
  cross-correlation and, on ties, the smaller template index (the one-shot order).

The integrated log-likelihood (a log-sum-exp over all templates with the normalised template
weights) is computed once from the assembled ``log_likelihood_ms``. The result equals the
one-shot ``search`` with the same explicit ``n_images_per_batch``, ``n_templates_per_batch``,
device and precision bit for bit.

:func:`run_likelihood_optimal_pose` and :func:`run_likelihood_full_cross_correlation` are the
file workflows of :mod:`corrscan.likelihood.workflow` (stack loop, output names, ``skip_exist``,
atomic writes: written there once) with each stack's search run by :func:`likelihood_search`:
tasks (template ranges) on workers and a checkpoint per stack.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from corrscan.core.checkpoint import Checkpoint, fingerprint
from corrscan.distributed.resume import client_for, load_progress, run_tasks
from corrscan.errors import InputError
from corrscan.likelihood.kernel import SearchResult, search
from corrscan.likelihood.stacks import PolarImages, PolarTemplates
from corrscan.likelihood.workflow import (
    DisplacementConfig,
    LikelihoodFiles,
    StackJob,
    full_cross_correlation_files,
    optimal_pose_files,
)

__all__ = [
    "likelihood_search",
    "likelihood_tasks",
    "merge_states",
    "run_likelihood_full_cross_correlation",
    "run_likelihood_optimal_pose",
]

STATE_FORMAT = "corrscan.likelihood.partial"
_LEVELS = ("full", "displacement", "rotation", "displacement_rotation", "pose")
_DEFAULT_BATCHES = (32, 64)  # images, templates per GEMM batch when not given (CPU caps)


def likelihood_tasks(
    n_images: int,
    n_templates: int,
    n_images_per_batch: int,
    n_templates_per_batch: int,
    *,
    image_chunk: int | None = None,
    template_chunk: int | None = None,
) -> list[tuple[int, int, int, int]]:
    """Tasks ``(i0, i1, s0, s1)``: image ranges x template ranges aligned to the batch sizes.

    ``image_chunk`` / ``template_chunk`` (images / templates per task) are rounded up to whole
    batches; default: all images, all templates (one task).
    """
    if n_images < 1 or n_templates < 1:
        raise InputError(
            f"empty search space: {n_images} image(s) x {n_templates} template(s); give at "
            "least one of each"
        )
    if n_images_per_batch < 1 or n_templates_per_batch < 1:
        raise InputError("batch sizes must be >= 1")

    def ranges(n: int, batch: int, chunk: int | None) -> list[tuple[int, int]]:
        size = n if chunk is None else int(chunk)
        if size < 1:
            raise InputError(f"chunk sizes must be >= 1, got {chunk}")
        size = math.ceil(size / batch) * batch
        return [(a, min(a + size, n)) for a in range(0, n, size)]

    return [
        (i0, i1, s0, s1)
        for i0, i1 in ranges(n_images, n_images_per_batch, image_chunk)
        for s0, s1 in ranges(n_templates, n_templates_per_batch, template_chunk)
    ]


def _templates_subset(t: PolarTemplates, s0: int, s1: int) -> PolarTemplates:
    return PolarTemplates(t.data[s0:s1], t.grid, t.euler[s0:s1], t.weights[s0:s1], t.name)


def _task(
    task: tuple[int, int, int, int],
    *,
    images: PolarImages,
    templates: PolarTemplates,
    displacements: np.ndarray | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    i0, i1, s0, s1 = (int(v) for v in task)
    res = search(
        images.subset(slice(i0, i1)), _templates_subset(templates, s0, s1), displacements,
        **options,
    )  # fmt: skip
    block: dict[str, torch.Tensor] = {}
    level = options["level"]
    if level != "pose":
        block["cc"] = res.cross_correlation
        for name in ("displacement_x", "displacement_y", "inplane_rotation"):
            v = getattr(res, name)
            if v is not None:
                block[name] = v
    if res.log_likelihood_ms is not None:
        block["log_likelihood_ms"] = res.log_likelihood_ms
    if res.log_likelihood_full is not None:
        block["log_likelihood_full"] = res.log_likelihood_full
    state: dict[str, Any] = {
        "format": STATE_FORMAT,
        "blocks": {f"{i0}:{i1}:{s0}:{s1}": block},
        "pose": {},
        "displacements": torch.from_numpy(np.asarray(res.displacements, dtype=np.float64)),
        "rotations": torch.from_numpy(np.asarray(res.rotations, dtype=np.float64)),
    }
    if level == "pose":
        pose = {
            "cc": res.cross_correlation,
            "template": res.template + s0,
            "displacement_x": res.displacement_x,
            "displacement_y": res.displacement_y,
            "inplane_rotation": res.inplane_rotation,
        }
        if res.log_likelihood_optimal is not None:
            pose["log_likelihood_optimal"] = res.log_likelihood_optimal
        state["pose"] = {f"{i0}:{i1}": pose}
    return state


def _merge_pose(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, Any]:
    better = (b["cc"] > a["cc"]) | ((b["cc"] == a["cc"]) & (b["template"] < a["template"]))
    return {k: torch.where(better, b[k], a[k]) for k in a}


def merge_states(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Exact merge of two task states (new dict; the inputs are not modified)."""
    for st in (a, b):
        if not isinstance(st, dict) or st.get("format") != STATE_FORMAT:
            raise InputError("not a likelihood partial state (format mismatch)")
    dup = set(a["blocks"]) & set(b["blocks"])
    if dup:
        raise InputError(f"task blocks {sorted(dup)[:3]} were merged twice")
    pose = dict(a["pose"])
    for k, v in b["pose"].items():
        pose[k] = _merge_pose(pose[k], v) if k in pose else v
    return {**a, "blocks": {**a["blocks"], **b["blocks"]}, "pose": pose}


def _finish(
    state: dict[str, Any], images: PolarImages, templates: PolarTemplates, options: dict
) -> SearchResult:
    m, s = len(images), len(templates)
    level = options["level"]
    disp = state["displacements"].numpy()
    rot = state["rotations"].numpy()
    res = SearchResult(level=level, cross_correlation=torch.empty(0), displacements=disp,
                       rotations=rot)  # fmt: skip
    full: dict[str, torch.Tensor] = {}
    covered = torch.zeros(m, s, dtype=torch.bool)
    for key, block in state["blocks"].items():
        i0, i1, s0, s1 = (int(v) for v in key.split(":"))
        covered[i0:i1, s0:s1] = True
        for name, v in block.items():
            if name not in full:
                full[name] = torch.empty((m, s, *v.shape[2:]), dtype=v.dtype)
            full[name][i0:i1, s0:s1] = v
    if not bool(covered.all()):
        raise InputError("the merged likelihood state misses some image x template blocks")
    if level == "pose":
        parts = sorted(state["pose"].items(), key=lambda kv: int(kv[0].split(":")[0]))
        pose = {k: torch.cat([p[k] for _, p in parts]) for k in parts[0][1]}
        res.cross_correlation = pose["cc"]
        res.template = pose["template"]
        res.displacement_x = pose["displacement_x"]
        res.displacement_y = pose["displacement_y"]
        res.inplane_rotation = pose["inplane_rotation"]
        res.log_likelihood_optimal = pose.get("log_likelihood_optimal")
    else:
        res.cross_correlation = full["cc"]
        res.displacement_x = full.get("displacement_x")
        res.displacement_y = full.get("displacement_y")
        res.inplane_rotation = full.get("inplane_rotation")
    if "log_likelihood_ms" in full:
        llms = full["log_likelihood_ms"]
        res.log_likelihood_ms = llms
        lw = torch.as_tensor(templates.weights, dtype=torch.float64)
        lw = torch.log(lw / lw.sum())
        res.integrated_log_likelihood = torch.logsumexp(llms + lw[None], dim=1)
        res.log_likelihood_full = full.get("log_likelihood_full")
    res.batch_sizes = {
        "n_images_per_batch": options["n_images_per_batch"],
        "n_templates_per_batch": options["n_templates_per_batch"],
    }
    return res


def likelihood_search(
    images: PolarImages,
    templates: PolarTemplates,
    displacements: np.ndarray | None = None,
    *,
    level: Literal["full", "displacement", "rotation", "displacement_rotation", "pose"] = "pose",
    likelihood: bool = False,
    optimal_likelihood: bool = False,
    n_images_per_batch: int | None = 32,
    n_templates_per_batch: int | None = 64,
    image_chunk: int | None = None,
    template_chunk: int | None = None,
    device: str = "cpu",
    precision: Literal["single", "double"] = "single",
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    checkpoint: str | Path | None = None,
    checkpoint_interval_s: float = 60.0,
    progress: bool | None = None,
    on_chunk: Callable[[Any, int], None] | None = None,
) -> SearchResult:
    """:func:`corrscan.likelihood.search` as (image range x template range) tasks.

    Parameters
    ----------
    images, templates, displacements, level, likelihood, optimal_likelihood, device, precision
        As for :func:`corrscan.likelihood.search`.
    n_images_per_batch, n_templates_per_batch
        GEMM batch sizes (explicit: they fix the floating-point grouping; the result equals
        ``search`` with the same values). Defaults: CPU caps of ``search``.
    image_chunk, template_chunk
        Images / templates per task (rounded up to whole batches). Default: on a cluster,
        the templates are split into ``2 x workers`` ranges; in-process, one task.
    workers, scheduler, client
        Where to run (see :func:`corrscan.distributed.search2d.search2d`); none: in-process.
    checkpoint, checkpoint_interval_s, progress, on_chunk
        Resumable progress, as for :func:`~corrscan.distributed.search2d.search2d`.
    """
    if level not in _LEVELS:
        raise InputError(f"unknown level {level!r}: use one of {', '.join(_LEVELS)}")
    if optimal_likelihood and level != "pose":
        raise InputError("optimal_likelihood needs level='pose'")
    if not images.grid.compatible(templates.grid):
        raise InputError(
            "images and templates are on different polar grids: rebuild one of them "
            "(same n_pixels, pixel_size, shells and in-plane angles)"
        )
    if len(images) == 0 or len(templates) == 0:
        raise InputError(
            f"empty search space: {len(images)} image(s) x {len(templates)} template(s)"
        )
    for name, t in (("images", images.data), ("templates", templates.data)):
        if not bool(torch.isfinite(torch.view_as_real(t)).all()):
            raise InputError(f"{name} contain NaN or Inf: rebuild the {name} from clean data")
    options = {
        "level": level,
        "likelihood": bool(likelihood),
        "optimal_likelihood": bool(optimal_likelihood),
        "n_images_per_batch": int(n_images_per_batch or _DEFAULT_BATCHES[0]),
        "n_templates_per_batch": int(n_templates_per_batch or _DEFAULT_BATCHES[1]),
        "device": device,
        "precision": precision,
    }
    ctf = images.ctf if isinstance(images.ctf, torch.Tensor) else images.ctf.to_dict()
    ctf_parts = [ctf] if isinstance(ctf, torch.Tensor) else [
        x for k in sorted(ctf) for x in (k, np.asarray(ctf[k]))
    ]  # fmt: skip
    key = fingerprint(
        "likelihood", options, images.data, images.norms, templates.data, templates.weights,
        "none" if displacements is None else np.asarray(displacements, dtype=np.float64),
        *ctf_parts,
    )  # fmt: skip
    ckpt = (
        None
        if checkpoint is None
        else Checkpoint(checkpoint, key, interval_s=checkpoint_interval_s)
    )
    saved = load_progress(ckpt, required=("chunks",))
    with client_for(client, workers, scheduler) as cl:
        if saved is not None:
            tasks = list(saved["chunks"])
        else:
            tc = template_chunk
            if tc is None and image_chunk is None and cl is not None:
                n_workers = len(cl.scheduler_info().get("workers", {})) or (workers or 1)
                tc = math.ceil(len(templates) / (2 * n_workers))
            tasks = likelihood_tasks(
                len(images), len(templates), options["n_images_per_batch"],
                options["n_templates_per_batch"], image_chunk=image_chunk, template_chunk=tc,
            )  # fmt: skip
        state = run_tasks(
            tasks,
            _task,
            merge_states,
            shared={
                "images": images,
                "templates": templates,
                "displacements": displacements,
                "options": options,
            },
            client=cl,
            checkpoint=ckpt,
            extra={"chunks": [list(t) for t in tasks]},
            on_task=on_chunk,
            description="likelihood tasks",
            progress=progress,
        )
    return _finish(state, images, templates, options)


@dataclass(frozen=True)
class _TaskSearch:
    """A :data:`~corrscan.likelihood.workflow.StackSearch`: :func:`likelihood_search` on
    ``client`` with a checkpoint per stack in the output folder."""

    file_config: LikelihoodFiles
    client: Any
    n_images_per_batch: int | None
    n_templates_per_batch: int | None
    template_chunk: int | None
    device: str
    resume: bool
    checkpoint_interval_s: float

    def checkpoint(self, job: StackJob) -> Path:
        """``.templateN_[full_]stack_NNNNNN.checkpoint.pt`` (hidden; per structure and level)."""
        kind = "" if job.level == "pose" else f"{job.level}_"
        name = f".template{self.file_config.i_template}_{kind}stack_{job.stack:06d}"
        return Path(self.file_config.folder_output) / f"{name}.checkpoint.pt"

    def __call__(self, job: StackJob) -> SearchResult:
        ck = self.checkpoint(job)
        if not self.resume:
            ck.unlink(missing_ok=True)
        return likelihood_search(
            job.images, job.templates, job.displacements, level=job.level,
            likelihood=job.likelihood, optimal_likelihood=job.optimal_likelihood,
            n_images_per_batch=self.n_images_per_batch,
            n_templates_per_batch=self.n_templates_per_batch, template_chunk=self.template_chunk,
            device=self.device, precision=job.precision, client=self.client, checkpoint=ck,
            checkpoint_interval_s=self.checkpoint_interval_s,
        )  # fmt: skip

    def written(self, job: StackJob) -> None:
        """The stack's files are written: its checkpoint is no longer needed."""
        self.checkpoint(job).unlink(missing_ok=True)


def _on_workers(
    files: Callable[..., list[Path]],
    file_config: LikelihoodFiles,
    displacement_config: DisplacementConfig | None,
    *,
    workers: int | None,
    scheduler: str | None,
    client: Any,
    n_images_per_batch: int | None,
    n_templates_per_batch: int | None,
    template_chunk: int | None,
    device: str,
    resume: bool,
    checkpoint_interval_s: float,
    **workflow_options: Any,
) -> list[Path]:
    """The file workflow ``files`` with each stack searched by :class:`_TaskSearch`.

    ``workers``, ``scheduler``, ``client``: where the tasks run (:func:`client_for`); the
    other named options are the :class:`_TaskSearch` fields; ``workflow_options`` go to
    ``files``.
    """
    with client_for(client, workers, scheduler) as cl:
        run = _TaskSearch(
            file_config=file_config, client=cl, n_images_per_batch=n_images_per_batch,
            n_templates_per_batch=n_templates_per_batch, template_chunk=template_chunk,
            device=device, resume=resume, checkpoint_interval_s=checkpoint_interval_s,
        )  # fmt: skip
        return files(
            file_config, displacement_config, run, on_stack_written=run.written,
            **workflow_options,
        )  # fmt: skip


def run_likelihood_optimal_pose(
    file_config: LikelihoodFiles,
    displacement_config: DisplacementConfig | None = None,
    *,
    skip_exist: bool = False,
    n_templates_per_batch: int | None = 64,
    n_images_per_batch: int | None = 32,
    return_likelihood_optimal_pose_fourier: bool = True,
    return_likelihood_integrated_pose_fourier: bool = True,
    device: str = "cpu",
    precision: Literal["single", "double"] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    template_chunk: int | None = None,
    resume: bool = True,
    checkpoint_interval_s: float = 60.0,
) -> list[Path]:
    """:func:`corrscan.likelihood.workflow.run_likelihood_optimal_pose` on Dask workers.

    Same inputs and output files (the file workflow is
    :func:`corrscan.likelihood.workflow.optimal_pose_files`); every particle stack is searched
    as template-range tasks (:func:`likelihood_search`) with a checkpoint
    ``.templateN_stack_NNNNNN.checkpoint.pt`` in the output folder, removed once the stack's
    files are written. ``resume=False`` discards such checkpoints. ``skip_exist`` skips stacks
    whose files all exist (a batch run restarted with the same command continues).
    """
    return _on_workers(
        optimal_pose_files, file_config, displacement_config, workers=workers,
        scheduler=scheduler, client=client, n_images_per_batch=n_images_per_batch,
        n_templates_per_batch=n_templates_per_batch, template_chunk=template_chunk,
        device=device, resume=resume, checkpoint_interval_s=checkpoint_interval_s,
        skip_exist=skip_exist, precision=precision,
        return_likelihood_optimal_pose_fourier=return_likelihood_optimal_pose_fourier,
        return_likelihood_integrated_pose_fourier=return_likelihood_integrated_pose_fourier,
    )  # fmt: skip


def run_likelihood_full_cross_correlation(
    file_config: LikelihoodFiles,
    displacement_config: DisplacementConfig | None = None,
    *,
    skip_exist: bool = False,
    n_templates_per_batch: int | None = 64,
    n_images_per_batch: int | None = 32,
    device: str = "cpu",
    precision: Literal["single", "double"] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    template_chunk: int | None = None,
    resume: bool = True,
    checkpoint_interval_s: float = 60.0,
) -> list[Path]:
    """:func:`corrscan.likelihood.workflow.run_likelihood_full_cross_correlation` on workers.

    Same output file per stack (``cross_correlation_pose_msdw_stack_NNNNNN.pt``: the full
    `(M, S, D, W)` tensor, displacements, in-plane rotations), written atomically by
    :func:`corrscan.likelihood.workflow.full_cross_correlation_files`; tasks and checkpoints
    (``.templateN_full_stack_NNNNNN.checkpoint.pt``) as in :func:`run_likelihood_optimal_pose`.
    """
    return _on_workers(
        full_cross_correlation_files, file_config, displacement_config, workers=workers,
        scheduler=scheduler, client=client, n_images_per_batch=n_images_per_batch,
        n_templates_per_batch=n_templates_per_batch, template_chunk=template_chunk,
        device=device, resume=resume, checkpoint_interval_s=checkpoint_interval_s,
        skip_exist=skip_exist, precision=precision,
    )  # fmt: skip
