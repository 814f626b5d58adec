"""File workflow (CryoLike's names): parameters -> templates -> particle stacks -> likelihood.

Layout
------
::

    TEMPLATES/parameters.yaml                      ImageParameters (grid + viewing directions)
    TEMPLATES/templates_fourier_<name>.pt          PolarTemplates (one structure per file)
    TEMPLATES/template_file_list.npy               paths of the template files, in order
    PARTICLES/parameters.yaml                      copy of the parameters used
    PARTICLES/fft/particles_fourier_stack_NNNNNN.pt PolarImages (``batch_size`` images each)
    OUT/displacements_set.pt                       `(D, 2)` image-frame (x, y) Å, float64
    OUT/templateN/optimal_pose/cross_correlation_stack_NNNNNN.pt      `(M,)`
    OUT/templateN/optimal_pose/optimal_template_stack_NNNNNN.pt       `(M,)` int64
    OUT/templateN/optimal_pose/optimal_displacement_{x,y}_stack_NNNNNN.pt   `(M,)` Å image frame
    OUT/templateN/optimal_pose/optimal_displacement_template_{x,y}_stack_NNNNNN.pt  template frame
    OUT/templateN/optimal_pose/optimal_inplane_rotation_stack_NNNNNN.pt `(M,)` degrees
    OUT/templateN/optimal_pose/optimal_pose_stack_NNNNNN.csv          the same as one table
    OUT/templateN/cross_correlation/cross_correlation_stack_NNNNNN.pt  `(M,)` (CryoLike path)
    OUT/templateN/log_likelihood/log_likelihood_integrated_fourier_stack_NNNNNN.pt `(M,)`
    OUT/templateN/log_likelihood/log_likelihood_optimal_fourier_stack_NNNNNN.pt   `(M,)`
    OUT/templateN/log_likelihood/log_likelihood_ms_stack_NNNNNN.pt    `(M, S)` per template
    OUT/templateN/cross_correlation/cross_correlation_pose_msdw_stack_NNNNNN.pt  (full variant:
        dict of tensors ``cross_correlation`` `(M, S, D, W)`, ``displacements`` `(D, 2)`,
        ``inplane_rotations`` `(W,)` degrees; loads with ``weights_only=True``)

``N`` in ``templateN`` is the index of the structure in ``template_file_list.npy``; stacks are
numbered from 0 with six digits. Every file is written to a temporary name and renamed.
``skip_exist`` skips a stack whose expected files all exist.

The stack loop, names, ``skip_exist`` and writes are :func:`optimal_pose_files` and
:func:`full_cross_correlation_files`, parameterised by the :data:`StackSearch` that computes
one stack's result: :func:`search` in-process here, task-split on workers with checkpoints in
``corrscan.distributed.likelihood``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from corrscan.core.config import Config
from corrscan.core.progress import track
from corrscan.errors import FileFormatError, InputError
from corrscan.likelihood.grid import (
    PolarGrid,
    ViewingGrid,
    displacement_grid,
    viewing_grid_fibonacci,
    viewing_grid_gauss_legendre,
)
from corrscan.likelihood.kernel import SearchResult, search
from corrscan.likelihood.particles import (
    ParticleStack,
    check_stack,
    read_cryosparc,
    read_star_indexed,
    read_star_paired,
)
from corrscan.likelihood.stacks import (
    PolarImages,
    PolarTemplates,
    atomic_save,
    images_from_real_space,
)
from corrscan.likelihood.templates import templates_from_file

log = logging.getLogger(__name__)

__all__ = [
    "DisplacementConfig",
    "ImageParameters",
    "LikelihoodFiles",
    "StackJob",
    "StackSearch",
    "configure_displacement",
    "configure_likelihood_files",
    "convert_particle_stacks",
    "convert_particle_stacks_from_indexed_cryosparc_file",
    "convert_particle_stacks_from_indexed_star_file",
    "convert_particle_stacks_from_paired_star_and_mrc_files",
    "full_cross_correlation_files",
    "make_templates_from_inputs",
    "optimal_pose_files",
    "run_likelihood_full_cross_correlation",
    "run_likelihood_optimal_pose",
    "stack_index",
    "stack_name",
]


# ----------------------------------------------------------------------------- configs
class ImageParameters(Config):
    """Polar grid and viewing directions shared by templates and images (YAML)."""

    n_pixels: int = Field(gt=3, description="image side, pixels")
    pixel_size: float = Field(gt=0, description="Å/pixel")
    resolution_factor: float = Field(1.0, gt=0, le=2)
    n_shells: int | None = Field(None, description="default round(n_pixels * factor) + 1")
    n_inplanes: int | None = Field(None, description="angles per shell (even); default 2 n_pixels")
    quadrature: Literal["gauss-jacobi", "gauss-legendre"] = "gauss-jacobi"
    viewing: Literal["gauss-legendre", "fibonacci"] = "gauss-legendre"
    viewing_distance: float = Field(1.0 / (4.0 * np.pi), gt=0, description="CryoLike units")
    n_viewing: int = Field(300, gt=0, description="directions of the 'fibonacci' grid")
    atom_selection: Literal["all", "heavy", "CA", "backbone"] = "all"
    atom_sigma: float = Field(1.5, gt=0, description="Gaussian atom standard deviation, Å")
    precision: Literal["single", "double"] = "single"

    def grid(self) -> PolarGrid:
        return PolarGrid.create(
            self.n_pixels,
            self.pixel_size,
            resolution_factor=self.resolution_factor,
            n_shells=self.n_shells,
            n_inplanes=self.n_inplanes,
            quadrature=self.quadrature,
        )

    def viewing_grid(self) -> ViewingGrid:
        if self.viewing == "fibonacci":
            return viewing_grid_fibonacci(self.n_viewing)
        return viewing_grid_gauss_legendre(self.viewing_distance)


class LikelihoodFiles(Config):
    """Where :func:`run_likelihood_optimal_pose` reads and writes."""

    template_file: str
    i_template: int = Field(ge=0)
    particle_files: list[str]
    folder_output: str


class DisplacementConfig(Config):
    """Rectangular image-frame displacement grid (see :func:`displacement_grid`)."""

    max_displacement_pixels: float = Field(8.0, ge=0)
    n_displacements_x: int = Field(1, ge=1)
    n_displacements_y: int = Field(1, ge=1)

    def displacements(self, pixel_size: float) -> np.ndarray:
        return displacement_grid(
            self.max_displacement_pixels,
            self.n_displacements_x,
            self.n_displacements_y,
            pixel_size=pixel_size,
        )


def stack_name(prefix: str, i: int, ext: str = "pt") -> str:
    """File name of stack ``i`` of an output kind: ``<prefix>_stack_NNNNNN.<ext>`` (6 digits).

    >>> stack_name("optimal_template", 3)
    'optimal_template_stack_000003.pt'
    """
    if i < 0:
        raise InputError(f"stack index must be >= 0, got {i}")
    return f"{prefix}_stack_{i:06d}.{ext}"


# ----------------------------------------------------------------------------- templates
def make_templates_from_inputs(
    list_of_inputs: list[str | Path],
    image_parameters: ImageParameters | str | Path,
    folder_output: str | Path,
    *,
    device: str = "cpu",
) -> list[Path]:
    """Templates for every input (PDB/mmCIF model or MRC map) on the parameters' grid.

    Writes ``templates_fourier_<name>.pt`` (``_1``, ``_2`` ... on a name clash),
    ``template_file_list.npy`` and ``parameters.yaml`` into ``folder_output``.
    """
    params = _params(image_parameters)
    out = Path(folder_output)
    out.mkdir(parents=True, exist_ok=True)
    grid, viewing = params.grid(), params.viewing_grid()
    paths: list[Path] = []
    used: set[str] = set()
    for item in list_of_inputs:
        tpl = templates_from_file(
            item,
            grid,
            viewing,
            atom_selection=params.atom_selection,
            atom_sigma=params.atom_sigma,
            device=device,
            precision=params.precision,
        )
        name, k = tpl.name, 1
        while name in used:
            name, k = f"{tpl.name}_{k}", k + 1
        used.add(name)
        tpl.name = name
        path = out / f"templates_fourier_{name}.pt"
        tpl.save(path)
        paths.append(path)
        log.info("wrote %d templates of %s to %s", len(tpl), item, path)
    np.save(out / "template_file_list.npy", np.array([str(p) for p in paths]))
    params.to_yaml(out / "parameters.yaml")
    return paths


def _params(p: ImageParameters | str | Path) -> ImageParameters:
    return p if isinstance(p, ImageParameters) else ImageParameters.from_yaml(p)


# ----------------------------------------------------------------------------- particles
def convert_particle_stacks(
    stack: ParticleStack,
    image_parameters: ImageParameters | str | Path,
    folder_output: str | Path,
    *,
    batch_size: int = 1024,
    apply_origin_shifts: bool = True,
    first_stack: int = 0,
    device: str = "cpu",
) -> list[Path]:
    """Real-space particles -> ``fft/particles_fourier_stack_NNNNNN.pt`` files of ``batch_size``."""
    params = _params(image_parameters)
    grid = params.grid()
    check_stack(stack, grid.n_pixels, grid.pixel_size)
    out = Path(folder_output)
    (out / "fft").mkdir(parents=True, exist_ok=True)
    params.to_yaml(out / "parameters.yaml")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    paths = []
    m = stack.images.shape[0]
    for k, i0 in enumerate(range(0, m, batch_size)):
        sl = slice(i0, i0 + batch_size)
        tab = stack.table.iloc[sl].reset_index(drop=True)
        shifts = tab[["origin_x", "origin_y"]].to_numpy() if apply_origin_shifts else None
        pol = images_from_real_space(
            stack.images[sl],
            grid,
            stack.ctf.subset(np.arange(m)[sl]),
            table=tab,
            shifts=shifts,
            precision=params.precision,
            device=device,
        )
        path = out / "fft" / stack_name("particles_fourier", first_stack + k)
        pol.save(path)
        paths.append(path)
    return paths


def convert_particle_stacks_from_paired_star_and_mrc_files(
    params_input: ImageParameters | str | Path,
    particle_file_list: list[str | Path],
    star_file_list: list[str | Path],
    folder_output: str | Path,
    *,
    batch_size: int = 1024,
    pixel_size: float | None = None,
    apply_origin_shifts: bool = True,
) -> list[Path]:
    """Pairs of (MRC stack, STAR file) -> polar particle stacks (numbered consecutively)."""
    if len(particle_file_list) != len(star_file_list):
        raise InputError(
            f"{len(particle_file_list)} MRC files but {len(star_file_list)} STAR files: "
            "give one STAR per stack"
        )
    paths: list[Path] = []
    for mrc, star in zip(particle_file_list, star_file_list, strict=True):
        st = read_star_paired(star, mrc, pixel_size=pixel_size)
        paths += convert_particle_stacks(
            st, params_input, folder_output, batch_size=batch_size,
            apply_origin_shifts=apply_origin_shifts, first_stack=len(paths),
        )  # fmt: skip
    return paths


def convert_particle_stacks_from_indexed_star_file(
    params_input: ImageParameters | str | Path,
    star_file: str | Path,
    folder_output: str | Path,
    *,
    batch_size: int = 1024,
    pixel_size: float | None = None,
    apply_origin_shifts: bool = True,
) -> list[Path]:
    """An indexed STAR file (``rlnImageName = idx@stack``) -> polar particle stacks."""
    st = read_star_indexed(star_file, pixel_size=pixel_size)
    return convert_particle_stacks(
        st, params_input, folder_output, batch_size=batch_size,
        apply_origin_shifts=apply_origin_shifts,
    )  # fmt: skip


def convert_particle_stacks_from_indexed_cryosparc_file(
    params_input: ImageParameters | str | Path,
    file_cs: str | Path,
    folder_output: str | Path,
    *,
    folder_cryosparc: str | Path | None = None,
    batch_size: int = 1024,
    apply_origin_shifts: bool = True,
) -> list[Path]:
    """A cryoSPARC ``.cs`` particle file -> polar particle stacks."""
    st = read_cryosparc(file_cs, project_dir=folder_cryosparc)
    return convert_particle_stacks(
        st, params_input, folder_output, batch_size=batch_size,
        apply_origin_shifts=apply_origin_shifts,
    )  # fmt: skip


# ----------------------------------------------------------------------------- likelihood runs
def configure_likelihood_files(
    folder_templates: str | Path,
    folder_particles: str | Path,
    folder_output: str | Path,
    n_stacks: int | None = None,
    i_template: int = 0,
) -> LikelihoodFiles:
    """Pick structure ``i_template`` of ``template_file_list.npy`` and the first ``n_stacks``
    particle stacks (all when ``None``)."""
    ft, fp = Path(folder_templates), Path(folder_particles)
    lst = ft / "template_file_list.npy"
    if lst.is_file():
        files = [str(x) for x in np.load(lst)]
        files = [f if Path(f).is_file() else str(ft / Path(f).name) for f in files]
    else:
        files = sorted(str(p) for p in ft.glob("templates_fourier_*.pt"))
    if not files:
        raise FileFormatError(f"no template files in {ft} (run make_templates_from_inputs first)")
    if not 0 <= i_template < len(files):
        raise InputError(f"i_template={i_template} but {ft} lists {len(files)} structure(s)")
    stacks = sorted(str(p) for p in (fp / "fft").glob("particles_fourier_stack_*.pt"))
    if not stacks:
        raise FileFormatError(f"no particle stacks in {fp / 'fft'} (convert the particles first)")
    if n_stacks is not None:
        if n_stacks < 1:
            raise InputError(f"n_stacks must be >= 1, got {n_stacks}")
        stacks = stacks[:n_stacks]
    return LikelihoodFiles(
        template_file=files[i_template],
        i_template=i_template,
        particle_files=stacks,
        folder_output=str(folder_output),
    )


def configure_displacement(
    max_displacement_pixels: float = 8.0,
    n_displacements_x: int = 1,
    n_displacements_y: int = 1,
) -> DisplacementConfig:
    """The displacement search grid (pixels of the particle images)."""
    return DisplacementConfig(
        max_displacement_pixels=max_displacement_pixels,
        n_displacements_x=n_displacements_x,
        n_displacements_y=n_displacements_y,
    )


def stack_index(path: str | Path) -> int:
    """Stack number ``N`` of a file ``<prefix>_stack_NNNNNN.<ext>`` (inverse of :func:`stack_name`).

    >>> stack_index("particles/fft/particles_fourier_stack_000012.pt")
    12

    Raises :class:`~corrscan.errors.InputError` naming the file when the name has no stack
    number (rename it to ``<prefix>_stack_NNNNNN.pt``).
    """
    stem = Path(path).stem
    head, _, num = stem.rpartition("_")
    if not head.endswith("_stack") or not num.isdigit():
        raise InputError(
            f"{path}: not a stack file name (expected <prefix>_stack_NNNNNN.<ext>, "
            "e.g. particles_fourier_stack_000000.pt)"
        )
    return int(num)


def _batches(estimate: bool, n_img: int | None, n_tpl: int | None) -> tuple[int | None, int | None]:
    """Explicit sizes win; else planned from free memory, or CryoLike's defaults (128, 1)."""
    if estimate:
        return n_img, n_tpl
    return n_img or 128, n_tpl or 1


def _precision_of(imgs: PolarImages) -> Literal["single", "double"]:
    return "double" if imgs.data.dtype == torch.complex128 else "single"


def _save_tensor(t: torch.Tensor, path: Path) -> None:
    atomic_save(t.contiguous().clone(), path)


def run_likelihood_optimal_pose(
    file_config: LikelihoodFiles,
    displacement_config: DisplacementConfig | None = None,
    *,
    skip_exist: bool = False,
    n_templates_per_batch: int | None = None,
    n_images_per_batch: int | None = None,
    estimate_batch_size: bool = True,
    return_likelihood_optimal_pose_fourier: bool = True,
    return_likelihood_integrated_pose_fourier: bool = True,
    device: str = "auto",
    precision: Literal["single", "double"] | None = None,
) -> list[Path]:
    """Optimal pose (+ likelihoods) of every image of every stack against one structure.

    ``estimate_batch_size=True`` plans batch sizes from free memory (CPU or GPU; CUDA OOM
    halves the image batch); explicit batch sizes override it. Returns the folders written.
    """
    return optimal_pose_files(
        file_config,
        displacement_config,
        _in_process(estimate_batch_size, n_images_per_batch, n_templates_per_batch, device),
        skip_exist=skip_exist,
        return_likelihood_optimal_pose_fourier=return_likelihood_optimal_pose_fourier,
        return_likelihood_integrated_pose_fourier=return_likelihood_integrated_pose_fourier,
        precision=precision,
        progress=None,
    )


def run_likelihood_full_cross_correlation(
    file_config: LikelihoodFiles,
    displacement_config: DisplacementConfig | None = None,
    *,
    skip_exist: bool = False,
    n_templates_per_batch: int | None = None,
    n_images_per_batch: int | None = None,
    estimate_batch_size: bool = True,
    device: str = "auto",
    precision: Literal["single", "double"] | None = None,
) -> list[Path]:
    """Full cross-correlation tensor `(M, S, D, W)` of every stack against one structure."""
    return full_cross_correlation_files(
        file_config,
        displacement_config,
        _in_process(estimate_batch_size, n_images_per_batch, n_templates_per_batch, device),
        skip_exist=skip_exist,
        precision=precision,
    )


# ----------------------------------------------------------------------------- shared file workflow
def _save_csv(table: pd.DataFrame, path: Path) -> None:
    """``table`` as CSV without the index, written to a temporary name and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".partial")
    table.to_csv(tmp, index=False)
    tmp.replace(path)


@dataclass(frozen=True)
class StackJob:
    """One particle stack's search, as the file workflow asks for it.

    Attributes
    ----------
    images
        The stack's images, `(M, ...)`.
    templates
        The structure's templates, `(S, ...)`.
    displacements
        `(D, 2)` image-frame (x, y) displacements, Å.
    stack
        Stack number ``N`` of ``particles_fourier_stack_NNNNNN.pt``.
    level, likelihood, optimal_likelihood, precision
        As for :func:`corrscan.likelihood.kernel.search` (``precision`` resolved from the
        images when the caller gave none).
    """

    images: PolarImages
    templates: PolarTemplates
    displacements: np.ndarray
    stack: int
    level: Literal["pose", "full"]
    precision: Literal["single", "double"]
    likelihood: bool = False
    optimal_likelihood: bool = False


StackSearch = Callable[[StackJob], SearchResult]
"""Computes one stack's :class:`~corrscan.likelihood.kernel.SearchResult`.

:func:`optimal_pose_files` and :func:`full_cross_correlation_files` own the stack loop, output
names, ``skip_exist`` and the atomic writes; a ``StackSearch`` is the in-process
:func:`search` (:func:`run_likelihood_optimal_pose`) or e.g. the task-split
``corrscan.distributed.likelihood.likelihood_search`` on workers with a checkpoint.
"""


def _in_process(
    estimate_batch_size: bool,
    n_images_per_batch: int | None,
    n_templates_per_batch: int | None,
    device: str,
) -> StackSearch:
    """:func:`search` in this process with the workflow's batch-size rule."""

    def run(job: StackJob) -> SearchResult:
        bi, bt = _batches(estimate_batch_size, n_images_per_batch, n_templates_per_batch)
        return search(
            job.images, job.templates, job.displacements, level=job.level,
            likelihood=job.likelihood, optimal_likelihood=job.optimal_likelihood,
            n_images_per_batch=bi, n_templates_per_batch=bt, device=device,
            precision=job.precision,
        )  # fmt: skip

    return run


def _setup(
    file_config: LikelihoodFiles, displacement_config: DisplacementConfig | None
) -> tuple[PolarTemplates, np.ndarray, Path]:
    """Templates, the `(D, 2)` displacement grid (Å) and the output folder (written there)."""
    disp_cfg = displacement_config or DisplacementConfig()
    tpl = PolarTemplates.load(file_config.template_file)
    out = Path(file_config.folder_output)
    disp = disp_cfg.displacements(tpl.grid.pixel_size)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save(torch.from_numpy(disp), out / "displacements_set.pt")
    return tpl, disp, out


def _optimal_pose_outputs(root: Path, k: int, integrated: bool, optimal: bool) -> dict[str, Path]:
    """Output files of stack ``k`` of the optimal-pose workflow, by kind."""
    op, ll = root / "optimal_pose", root / "log_likelihood"
    files = {
        "cc": op / stack_name("cross_correlation", k),
        "tpl": op / stack_name("optimal_template", k),
        "x": op / stack_name("optimal_displacement_x", k),
        "y": op / stack_name("optimal_displacement_y", k),
        "xt": op / stack_name("optimal_displacement_template_x", k),
        "yt": op / stack_name("optimal_displacement_template_y", k),
        "rot": op / stack_name("optimal_inplane_rotation", k),
        "csv": op / stack_name("optimal_pose", k, "csv"),
        "cc2": root / "cross_correlation" / stack_name("cross_correlation", k),
    }
    if integrated:
        files["ill"] = ll / stack_name("log_likelihood_integrated_fourier", k)
        files["llms"] = ll / stack_name("log_likelihood_ms", k)
    if optimal:
        files["llo"] = ll / stack_name("log_likelihood_optimal_fourier", k)
    return files


def _write_optimal_pose(
    res: SearchResult, tpl: PolarTemplates, files: dict[str, Path], integrated: bool, optimal: bool
) -> None:
    """The optimal-pose tensors and their CSV table of one stack (each file atomically)."""
    pose = res.optimal_pose()
    _save_tensor(pose.cross_correlation_M, files["cc"])
    _save_tensor(pose.cross_correlation_M, files["cc2"])
    _save_tensor(pose.optimal_template_M, files["tpl"])
    _save_tensor(pose.optimal_displacement_x_M, files["x"])
    _save_tensor(pose.optimal_displacement_y_M, files["y"])
    _save_tensor(pose.optimal_displacement_template_x_M, files["xt"])
    _save_tensor(pose.optimal_displacement_template_y_M, files["yt"])
    _save_tensor(pose.optimal_inplane_rotation_M, files["rot"])
    ti = pose.optimal_template_M.numpy()
    table = pd.DataFrame(
        {
            "image": np.arange(len(ti)),
            "cross_correlation": pose.cross_correlation_M.numpy(),
            "template": ti,
            "phi": tpl.euler[ti, 0],
            "theta": tpl.euler[ti, 1],
            "psi": pose.optimal_inplane_rotation_M.numpy(),
            "displacement_x_angst": pose.optimal_displacement_x_M.numpy(),
            "displacement_y_angst": pose.optimal_displacement_y_M.numpy(),
        }
    )
    if integrated:
        _save_tensor(res.integrated_log_likelihood, files["ill"])
        _save_tensor(res.log_likelihood_ms, files["llms"])
        table["log_likelihood_integrated"] = res.integrated_log_likelihood.numpy()
    if optimal:
        _save_tensor(res.log_likelihood_optimal, files["llo"])
        table["log_likelihood_optimal"] = res.log_likelihood_optimal.numpy()
    _save_csv(table, files["csv"])


def optimal_pose_files(
    file_config: LikelihoodFiles,
    displacement_config: DisplacementConfig | None,
    search_stack: StackSearch,
    *,
    skip_exist: bool = False,
    return_likelihood_optimal_pose_fourier: bool = True,
    return_likelihood_integrated_pose_fourier: bool = True,
    precision: Literal["single", "double"] | None = None,
    on_stack_written: Callable[[StackJob], None] | None = None,
    progress: bool | None = False,
) -> list[Path]:
    """The optimal-pose file workflow with ``search_stack`` computing each stack's result.

    Writes ``displacements_set.pt`` and, per stack not skipped by ``skip_exist``, the
    ``optimal_pose`` / ``cross_correlation`` / ``log_likelihood`` files of the module layout;
    then calls ``on_stack_written(job)`` (e.g. to drop a checkpoint). ``progress``: bar over the
    stacks (``None``: on for a terminal). Returns ``templateN`` once per stack written.
    """
    tpl, disp, out = _setup(file_config, displacement_config)
    root = out / f"template{file_config.i_template}"
    want_ll = return_likelihood_integrated_pose_fourier
    want_opt = return_likelihood_optimal_pose_fourier
    written: list[Path] = []
    stacks = track(
        file_config.particle_files, description="likelihood", unit="stack", enabled=progress
    )
    for path in stacks:
        k = stack_index(path)
        files = _optimal_pose_outputs(root, k, want_ll, want_opt)
        if skip_exist and all(f.is_file() for f in files.values()):
            log.info("stack %d: all outputs exist, skipped", k)
            continue
        imgs = PolarImages.load(path)
        job = StackJob(
            imgs, tpl, disp, k, "pose", precision or _precision_of(imgs), want_ll, want_opt
        )
        _write_optimal_pose(search_stack(job), tpl, files, want_ll, want_opt)
        if on_stack_written is not None:
            on_stack_written(job)
        written.append(root)
    return written


def full_cross_correlation_files(
    file_config: LikelihoodFiles,
    displacement_config: DisplacementConfig | None,
    search_stack: StackSearch,
    *,
    skip_exist: bool = False,
    precision: Literal["single", "double"] | None = None,
    on_stack_written: Callable[[StackJob], None] | None = None,
) -> list[Path]:
    """The full cross-correlation file workflow with ``search_stack`` computing each stack.

    Writes ``displacements_set.pt`` and, per stack not skipped by ``skip_exist``, the dict file
    ``cross_correlation_pose_msdw_stack_NNNNNN.pt`` atomically; then calls
    ``on_stack_written(job)``. Returns the files written.
    """
    tpl, disp, out = _setup(file_config, displacement_config)
    root = out / f"template{file_config.i_template}" / "cross_correlation"
    written: list[Path] = []
    for path in file_config.particle_files:
        k = stack_index(path)
        target = root / stack_name("cross_correlation_pose_msdw", k)
        if skip_exist and target.is_file():
            continue
        imgs = PolarImages.load(path)
        job = StackJob(imgs, tpl, disp, k, "full", precision or _precision_of(imgs))
        res = search_stack(job)
        atomic_save(
            {
                "cross_correlation": res.cross_correlation,
                "displacements": torch.from_numpy(disp),
                "inplane_rotations": torch.from_numpy(res.rotations),
            },
            target,
        )
        if on_stack_written is not None:
            on_stack_written(job)
        written.append(target)
    return written
