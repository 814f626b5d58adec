"""Chunk-level hooks of the 2D search: search a range of orientations, merge, finish.

:func:`corrscan.match2d.search.match_template` runs every orientation batch in one process.
The distributed driver (:mod:`corrscan.distributed.search2d`) needs the same search cut into
independent pieces whose partial states merge **exactly**:

* :func:`prepare_search` does everything :func:`match_template` does before the search loop
  (checks, Fourier cropping, whitening, filters, batch planning) and returns a
  :class:`Prepared2D`;
* :func:`search_chunk` searches orientations ``[start, stop)`` (GLOBAL indices into the
  orientation list, ``start`` a multiple of the batch size) batch by batch, exactly as the
  one-shot loop does, and returns a plain state dict (MIP, global winning item index, exact
  moment state);
* :func:`merge_states` merges two state dicts (max with smaller-index ties, exact sums);
* :func:`finish` turns the merged state into the :class:`MatchTemplateResult`.

Exactness: the moment sums of one orientation batch are float32 sums (matrix-vector products
over the batch's maps) folded into the exact fixed-point accumulator once per batch. Chunks that
start and stop at batch boundaries therefore run exactly the batches of the one-shot search, and
the merged result is bit-for-bit the one-shot result for the same ``orientation_batch_size``
(which is why :func:`prepare_search` always fixes the batch size and reports it).

For the job owner: this module re-implements the preparation part of ``match_template``
(``prepare_search``); folding it back means splitting ``match_template`` into
``prepare_search`` + a loop over :func:`search_chunk` + :func:`finish`, so that the two cannot
drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from corrscan.core.arrays import check_finite, plan_batch_size, resolve_device, to_tensor
from corrscan.core.stats import MomentAccumulator
from corrscan.errors import InputError
from corrscan.match2d._templates import prepare_template
from corrscan.match2d.config import (
    ComputeConfig,
    DefocusSearchConfig,
    OpticsGroup,
    OrientationSearchConfig,
    PreprocessingFilters,
)
from corrscan.match2d.preprocess import (
    combined_filter,
    noise_power_grid,
    rfft_weights,
    whiten_micrograph,
)
from corrscan.match2d.result import MatchTemplateResult
from corrscan.match2d.search import (
    SearchPlan,
    _as_model,
    _bytes_per_orientation,
    _chunk_bytes,
    _correlate_batch,
    _finish,
    _FusedState,
    _lag_indices,
    template_filters,
)

__all__ = [
    "STATE_FORMAT",
    "Prepared2D",
    "empty_state",
    "finish",
    "merge_states",
    "orientation_chunks",
    "prepare_search",
    "search_chunk",
]

STATE_FORMAT = "corrscan.match2d.partial"


@dataclass
class Prepared2D:
    """Everything a chunk needs (the :class:`SearchPlan`) and what :func:`finish` needs.

    Attributes
    ----------
    plan
        The job's search plan (whitened spectrum, filters, prepared template, angles).
    batch
        Orientations per batch (fixed; chunk boundaries are multiples of it).
    n_orient, n_defocus
        Sizes of the search space.
    angles
        `(n_orient, 3)` float64 degrees; ``defocus`` `(n_def,)` Å offsets.
    meta
        Values for the result metadata (pixel size, box, scale, ...).
    """

    plan: SearchPlan
    batch: int
    n_orient: int
    n_defocus: int
    angles: torch.Tensor
    defocus: torch.Tensor
    optics: OpticsGroup
    pixel_size: float
    box: int
    valid_crop: bool
    image_shape: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)


def prepare_search(
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
) -> Prepared2D:
    """The preparation of :func:`~corrscan.match2d.search.match_template` (same arguments).

    Uses the first device of ``compute`` only (the distributed driver parallelises over
    processes). The orientation batch size is ``compute.orientation_batch_size`` when given,
    else planned from free memory exactly like ``match_template`` (pass it explicitly to
    compare with a one-shot run, and to make a resumed run use the same batches).
    """
    optics = _as_model(optics, OpticsGroup, "optics")
    defocus_search = _as_model(defocus_search, DefocusSearchConfig, "defocus_search")
    orientation_search = _as_model(
        orientation_search, OrientationSearchConfig, "orientation_search"
    )
    preprocessing = _as_model(preprocessing, PreprocessingFilters, "preprocessing")
    compute = _as_model(compute, ComputeConfig, "compute")

    dev0 = resolve_device(compute.devices()[0])
    img = to_tensor(micrograph, name="micrograph").to(torch.float32)
    vol = to_tensor(template, name="template").to(torch.float32)
    if img.ndim != 2:
        raise InputError(f"micrograph must be 2D (H, W), got shape {tuple(img.shape)}")
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(f"template must be a cubic 3D map (D, D, D), got {tuple(vol.shape)}")
    check_finite(img, "micrograph")
    check_finite(vol, "template")
    box = int(vol.shape[-1])
    if box > min(img.shape):
        raise InputError(
            f"template box {box} is larger than the micrograph {tuple(img.shape)}: crop the "
            "template or use a larger micrograph"
        )
    if float(img.std()) == 0:
        raise InputError("micrograph is constant: nothing to search")

    pixel_size = float(optics.pixel_size)
    scale = 1.0
    if resolution_limit is not None:
        if resolution_limit <= 2 * pixel_size:
            raise InputError(
                f"resolution_limit {resolution_limit} Å must be coarser than Nyquist "
                f"({2 * pixel_size} Å) to crop anything"
            )
        f = 2 * pixel_size / resolution_limit
        new_box = max(8, round(box * f))
        f = new_box / box
        new_img = (
            max(new_box, round(img.shape[0] * f)),
            max(new_box, round(img.shape[1] * f)),
        )
        from corrscan.core.fourier import fourier_crop

        img = fourier_crop(img, new_img).to(torch.float32)
        vol = fourier_crop(vol, (new_box,) * 3).to(torch.float32)
        scale = box / new_box
        box = new_box
        pixel_size = pixel_size * scale

    h_img, w_img = (int(s) for s in img.shape)
    valid_shape = (h_img - box + 1, w_img - box + 1) if valid_crop else (h_img, w_img)

    if orientations is not None:
        angles = to_tensor(orientations, name="orientations").to(torch.float64).reshape(-1, 3)
        if angles.shape[0] == 0:
            raise InputError("orientations is empty: give at least one (phi, theta, psi) row")
    else:
        angles = orientation_search.angles().to(torch.float64)
        if angles.shape[0] == 0:
            raise InputError(
                "orientation_search gives no orientations: widen the angle ranges or the steps"
            )
    defocus = defocus_search.values()
    n_def = int(defocus.numel())
    n_orient = int(angles.shape[0])
    if n_def == 0:
        raise InputError("defocus_search gives no defocus values: check defocus_min/max/step")

    img_d = img.to(dev0)
    spectrum, phi_img = whiten_micrograph(img_d, preprocessing, pixel_size=pixel_size)
    tpl = prepare_template(vol.to(dev0), compute.template_oversampling)
    if compute.ctf_placement == "micrograph":
        g = template_filters(
            (h_img, w_img), optics, defocus.to(dev0), phi_img, pixel_size=pixel_size
        )
        filters = spectrum[None] * g
        wts = rfft_weights((h_img, w_img), device=dev0).clone()
        wts[0, 0] = 0
        s_grid = noise_power_grid(spectrum)
        wts = wts * s_grid
        noise_weights = (wts[None] * g.square()).reshape(n_def, -1).contiguous()
        extras: dict[str, Any] = {}
        if h_img >= 2 * box - 1 and w_img >= 2 * box - 1:
            a_half = s_grid.double()[None] * g.double().square()
            a_half[:, 0, 0] = 0
            kern = torch.fft.irfft2(a_half, s=(h_img, w_img)).reshape(n_def, -1)
            big = _lag_indices((h_img, w_img), box, dev0)
            extras["noise_kernel"] = (kern[:, big] / (h_img * w_img)).to(torch.float32)
            extras["small_lags"] = _lag_indices((2 * box, 2 * box), box, dev0)
        del g
    else:
        phi_box = combined_filter(img_d, (box, box), preprocessing, pixel_size=pixel_size)
        filters = template_filters(
            (box, box), optics, defocus.to(dev0), phi_box, pixel_size=pixel_size
        )
        noise_weights = None
        extras = {}

    # batch planning exactly as match_template (its thread workers count in the fixed bytes)
    cpu = dev0.type == "cpu"
    chunk = compute.chunk_orientations or (1 if cpu else 16)
    n_workers = (compute.num_threads or 1) if cpu else 1
    n_planned = sum(n_workers if resolve_device(d).type == "cpu" else 1 for d in compute.devices())
    fixed = _chunk_bytes((h_img, w_img), n_def, chunk) * n_planned
    per_orient = _bytes_per_orientation((h_img, w_img), tpl.padded_size, n_def, chunk)
    if compute.orientation_batch_size:
        batch = compute.orientation_batch_size
    else:
        batch = plan_batch_size(
            per_orient, device=dev0, fixed_bytes=fixed, fraction=0.4, max_batch=256, min_batch=1
        )
    if cpu:
        batch = max(chunk, min(batch, 64))
    batch = max(1, min(batch, n_orient))
    chunk = min(chunk, batch)

    plan = SearchPlan(
        spectrum=spectrum,
        image_shape=(h_img, w_img),
        template=tpl,
        filters=filters,
        noise_weights=noise_weights,
        angles=angles,
        n_defocus=n_def,
        valid_shape=valid_shape,
        placement=compute.ctf_placement,
        chunk=chunk,
        device=dev0,
        extras=extras,
    )
    meta = {
        "resolution_limit": resolution_limit,
        "scale_to_input": scale,
        "input_pixel_size": float(optics.pixel_size),
        "orientation_batch_size": batch,
        "chunk_orientations": chunk,
        "ctf_placement": compute.ctf_placement,
        "template_oversampling": compute.template_oversampling,
    }
    return Prepared2D(
        plan=plan,
        batch=batch,
        n_orient=n_orient,
        n_defocus=n_def,
        angles=angles,
        defocus=defocus,
        optics=optics,
        pixel_size=pixel_size,
        box=box,
        valid_crop=valid_crop,
        image_shape=(h_img, w_img),
        meta=meta,
    )


def orientation_chunks(
    n_orient: int, batch: int, chunk_size: int | None = None, n_chunks: int | None = None
) -> list[tuple[int, int]]:
    """Orientation index ranges ``[(start, stop), ...]`` aligned to ``batch``.

    ``chunk_size`` (orientations per chunk) is rounded up to a multiple of ``batch``; with
    ``n_chunks`` instead, the chunk size is ``ceil(n_orient / n_chunks)`` rounded the same way
    (so there may be fewer chunks). Default: one batch per chunk.
    """
    if n_orient < 1:
        raise InputError("the orientation search space is empty: nothing to search")
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    if chunk_size is not None and n_chunks is not None:
        raise InputError("give chunk_size or n_chunks, not both")
    if n_chunks is not None:
        if n_chunks < 1:
            raise InputError(f"n_chunks must be >= 1, got {n_chunks}")
        chunk_size = math.ceil(n_orient / n_chunks)
    size = batch if chunk_size is None else int(chunk_size)
    if size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    size = math.ceil(size / batch) * batch
    return [(s, min(s + size, n_orient)) for s in range(0, n_orient, size)]


def _state_of(fs: _FusedState) -> dict[str, Any]:
    fs.flush()
    return {
        "format": STATE_FORMAT,
        "mip": fs.mip.cpu().clone(),
        "index": fs.index.cpu().clone(),
        "moments": fs.moments.state_dict(),
    }


def _fused_of(state: dict[str, Any], prep: Prepared2D | None = None) -> _FusedState:
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise InputError("not a match2d partial state (format mismatch)")
    mip, index = state["mip"], state["index"]
    valid_shape = tuple(int(s) for s in mip.shape)
    image_shape = prep.image_shape if prep is not None else valid_shape
    fs = _FusedState(image_shape, valid_shape, torch.device("cpu"))  # type: ignore[arg-type]
    fs.mip = mip.clone()
    fs.index = index.clone()
    fs.moments = MomentAccumulator.from_state_dict(state["moments"], device="cpu")
    return fs


def empty_state(prep: Prepared2D) -> dict[str, Any]:
    """State of a search that has seen nothing yet (neutral element of :func:`merge_states`)."""
    return _state_of(_FusedState(prep.image_shape, prep.plan.valid_shape, torch.device("cpu")))


def search_chunk(prep: Prepared2D, start: int, stop: int) -> dict[str, Any]:
    """Search orientations ``[start, stop)`` x every defocus; return the partial state.

    ``start`` must be a multiple of ``prep.batch`` (see :func:`orientation_chunks`); the chunk
    runs its batches exactly as the one-shot search does (same batch boundaries, flushed after
    every batch). Winning indices are GLOBAL items ``orientation * n_defocus + defocus``.

    Returns
    -------
    dict
        ``{"format", "mip" `(H', W')` float32, "index" `(H', W')` int64 (-1: not searched),
        "moments": MomentAccumulator state}`` on the CPU.
    """
    if not (0 <= start < stop <= prep.n_orient):
        raise InputError(f"orientation range [{start}, {stop}) outside [0, {prep.n_orient})")
    if start % prep.batch:
        raise InputError(
            f"chunk start {start} is not a multiple of the batch size {prep.batch}: use "
            "orientation_chunks() so that chunks run exactly the one-shot batches"
        )
    plan = prep.plan
    fs = _FusedState(plan.image_shape, plan.valid_shape, plan.device)
    for a in range(start, stop, prep.batch):
        _correlate_batch(plan, fs, a, min(a + prep.batch, stop))
        fs.flush()
    return _state_of(fs)


def merge_states(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Exact merge of two partial states (new dict; inputs are not modified).

    The maximum keeps the smaller global index on ties (the one-shot order); moments add
    exactly (:meth:`MomentAccumulator.merge`).
    """
    fa, fb = _fused_of(a), _fused_of(b)
    if fa.shape != fb.shape:
        raise InputError(f"cannot merge match2d states of shapes {fa.shape} and {fb.shape}")
    return _state_of(fa.merge(fb))


def finish(prep: Prepared2D, state: dict[str, Any]) -> MatchTemplateResult:
    """The result maps of a complete merged state (every orientation searched once)."""
    fs = _fused_of(state, prep)
    if fs.moments.count != prep.n_orient * prep.n_defocus:
        raise InputError(
            f"the merged state covers {fs.moments.count} of "
            f"{prep.n_orient * prep.n_defocus} correlations: some chunks are missing"
        )
    result = _finish(
        fs,
        angles=prep.angles,
        defocus=prep.defocus,
        n_orient=prep.n_orient,
        optics=prep.optics,
        pixel_size=prep.pixel_size,
        box=prep.box,
        valid_crop=prep.valid_crop,
        image_shape=prep.image_shape,
    )
    result.metadata.update(prep.meta)
    return result
