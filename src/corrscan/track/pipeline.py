"""Bead tracking pipeline: x, y, z and flags for a batch of ROI images; Z-LUT builder.

Native, batch-first API: images are `(..., H, W)` (any leading batch shape, e.g.
`(n_frames, n_beads, H, W)`), x = column and y = row in pixels (origin at the first pixel's
centre), z in the Z-LUT's units. Every stage is one vectorised torch operation over the whole
batch; a bad image (NaN pixels, blank, bead at the edge) gives NaN and a flag for that image
only.

Stages of :func:`track_stack`:

1. validity: images with NaN/Inf pixels (``NONFINITE``) or no contrast (``BLANK``) are set
   aside (computed on zeros, reported as NaN);
2. start: centre of mass of ``|I - mean|``;
3. x, y: iterated Fourier symmetry-centre fit (:mod:`corrscan.track.xy`); ``XY_FAILED`` if no
   peak; ``EDGE`` if the centre is within ``edge_margin_px`` of the border;
4. radial profile at the sub-pixel centre (:mod:`corrscan.track.profiles`);
5. z from the Z-LUT (:mod:`corrscan.track.zlut`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from corrscan.core.arrays import as_numpy, plan_batch_size, unwrap
from corrscan.core.config import Config
from corrscan.core.threads import torch_threads
from corrscan.errors import InputError
from corrscan.track.flags import TrackFlag
from corrscan.track.profiles import radial_kernel
from corrscan.track.xy import com_kernel, symmetry_kernel
from corrscan.track.zlut import ZLUT, lookup_kernel

__all__ = [
    "TrackConfig",
    "TrackResult",
    "build_zlut",
    "cpu_threads",
    "crop_rois",
    "run_batched",
    "track_stack",
]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TrackConfig(Config):
    """Settings of the bead tracker (all have working defaults; load from YAML with
    ``TrackConfig.from_yaml``)."""

    background: Literal["mean", "median"] = Field(
        "mean", description="Background of the starting centre of mass |I - b|."
    )
    n_iterations: int = Field(
        2,
        ge=1,
        le=20,
        description="Symmetry-fit refinement passes after the capture pass (1 suffices for "
        "beads within a few px of the ROI centre; more for beads near the border).",
    )
    window_sigma: float | None = Field(
        None,
        gt=0,
        description="Gaussian window along the line, px (default ROI width / 4, at most the "
        "distance to the border / 2.5).",
    )
    band_sigma: float | None = Field(
        None, gt=0, description="Band of rows/columns averaged into a line, px (default W / 8)."
    )
    edge_margin_px: float = Field(
        4.0, ge=0, description="Centres closer than this to the ROI border are NaN (EDGE)."
    )
    min_symmetry: float = Field(
        0.5,
        ge=-1,
        le=1,
        description="x, y NaN (XY_FAILED) when the radial-symmetry score about the fitted "
        "centre (share of variance explained by the radial profile) is below this.",
    )
    n_bins: int | None = Field(
        None, ge=2, description="Radial bins (default (ROI width // 2) * oversample)."
    )
    oversample: int = Field(1, ge=1, le=8, description="Radial bins per pixel.")
    samples_per_px: float = Field(1.0, gt=0, description="Angular samples per px of arc.")
    lut_upsample: int = Field(10, ge=1, le=100, description="Spline sub-planes per LUT step.")
    min_correlation: float = Field(
        0.98,
        ge=-1,
        le=1,
        description="z is NaN (Z_LOW_CORRELATION) below this best-plane correlation: catches "
        "beads beyond the table's z range, which otherwise match a wrong plane (in-range "
        "simulated beads give r >= 0.99 even at 30 photons/px; lower it for poor tables).",
    )
    dtype: Literal["float32", "float64"] = Field("float32", description="Compute precision.")
    batch_size: int | None = Field(
        None, ge=1, description="Images per vectorised batch (default: planned from memory)."
    )
    cpu_threads: int | None = Field(
        1,
        ge=1,
        description="torch CPU threads while tracking (set for the call and restored after; "
        "process-wide, so not for concurrent callers). Default 1: tracking is many small "
        "operations, on which torch's thread pool is slower than one thread (measured 10x on "
        "a loaded 2-core machine). None keeps torch's current setting.",
    )


@dataclass
class TrackResult:
    """Tracking results; every array has the input's batch shape `(...)`.

    Attributes
    ----------
    x, y
        Centres in pixels (x = column, y = row, origin at the first pixel's centre); NaN where
        flagged.
    z
        Focus position in Z-LUT units (NaN without a LUT or where flagged).
    flags
        :class:`TrackFlag` bits (int32); 0 = clean.
    r
        Best Z-LUT correlation (NaN without a LUT).
    symmetry
        Radial-symmetry score about the fitted centre (1 = perfectly radially symmetric).
    profiles
        `(..., n_bins)` radial profiles at the measured centres.
    counts
        `(..., n_bins)` samples per radial bin (the lookup weights).
    """

    x: Any
    y: Any
    z: Any
    flags: Any
    r: Any
    symmetry: Any
    profiles: Any
    counts: Any

    def to_dataframe(self) -> Any:
        """Flat table with columns ``index, x, y, z, flags, r`` (one row per image)."""
        import pandas as pd

        x = as_numpy(self.x).reshape(-1)
        return pd.DataFrame(
            {
                "index": np.arange(x.shape[0]),
                "x": x,
                "y": as_numpy(self.y).reshape(-1),
                "z": as_numpy(self.z).reshape(-1),
                "flags": as_numpy(self.flags).reshape(-1),
                "r": as_numpy(self.r).reshape(-1),
            }
        )


def cpu_threads(n: int | None, device: torch.device | str = "cpu") -> AbstractContextManager:
    """Run the block with ``n`` torch CPU threads (``None``: unchanged; no-op off the CPU).

    The previous count is restored afterwards, also on error
    (:func:`corrscan.core.threads.torch_threads`).
    """
    if torch.device(device).type != "cpu":
        return nullcontext()
    return torch_threads(None if n is None else int(n))


def run_batched(
    img_all: torch.Tensor, cfg: TrackConfig, zlut: ZLUT | None = None
) -> dict[str, torch.Tensor]:
    """:func:`track_kernel` over `(n, H, W)` images in memory-planned batches, with
    ``cfg.cpu_threads`` torch threads; results concatenated (torch only, ``img_all`` unchanged).
    """
    n, h, w = img_all.shape
    if n == 0:
        raise InputError("stack has no images: give at least one (H, W) ROI image")
    n_tab = zlut.n_tables if zlut is not None else 1
    dtype = _DTYPES[cfg.dtype]
    per_image = h * w * (dtype.itemsize * 12) + 64 * 1024
    batch = cfg.batch_size or plan_batch_size(per_image, device=img_all.device, max_batch=8192)
    batch = max(n_tab, (batch // n_tab) * n_tab)
    parts: list[dict[str, torch.Tensor]] = []
    with cpu_threads(cfg.cpu_threads, img_all.device):
        for start in range(0, n, batch):  # memory-bounded chunks, each fully vectorised
            img = img_all[start : start + batch].to(dtype).contiguous()
            parts.append(track_kernel(img, cfg, zlut))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _resolve_config(config: TrackConfig | None, overrides: dict[str, Any]) -> TrackConfig:
    cfg = config if config is not None else TrackConfig()
    if overrides:
        cfg = TrackConfig.from_dict({**cfg.model_dump(), **overrides}, source="track_stack()")
    return cfg


def track_kernel(
    img: torch.Tensor,
    cfg: TrackConfig,
    zlut: ZLUT | None = None,
    *,
    lut_shape: int = 1,
) -> dict[str, torch.Tensor]:
    """Whole pipeline on a float tensor `(n, H, W)` (torch only; ``img`` is not modified).

    With a per-bead table, ``n`` must be a multiple of ``zlut.n_tables`` ordered frame-major
    (images ``i * n_beads + b``).
    """
    n, h, w = img.shape
    total = img.sum(dim=(-2, -1))
    finite = torch.isfinite(total)  # one pass; NaN/Inf pixels make it non-finite
    if not bool(finite.all()):
        img = torch.where(finite[:, None, None], img, torch.zeros((), dtype=img.dtype))
    x0, y0, mass = com_kernel(img, cfg.background, return_total=True)
    # constant image: no mass about its mean/median beyond rounding (1e-6 of the level)
    blank = finite & ~(mass > 1e-6 * total.abs())
    flags = torch.zeros(n, dtype=torch.int32, device=img.device)
    flags |= torch.where(~finite, int(TrackFlag.NONFINITE), 0).to(torch.int32)
    flags |= torch.where(blank, int(TrackFlag.BLANK), 0).to(torch.int32)

    x, y, ok, _sym = symmetry_kernel(
        img,
        x0,
        y0,
        n_iterations=cfg.n_iterations,
        window_sigma=cfg.window_sigma,
        band_sigma=cfg.band_sigma,
    )
    bad_xy = ~ok & (flags == 0)
    flags |= torch.where(bad_xy, int(TrackFlag.XY_FAILED), 0).to(torch.int32)
    m = cfg.edge_margin_px
    edge = (x < m) | (x > (w - 1) - m) | (y < m) | (y > (h - 1) - m)
    flags |= torch.where(edge & (flags == 0), int(TrackFlag.EDGE), 0).to(torch.int32)

    n_bins = cfg.n_bins or (min(h, w) // 2) * cfg.oversample
    if zlut is not None:
        if zlut.n_bins != n_bins or zlut.oversample != cfg.oversample:
            raise InputError(
                f"the Z-LUT has {zlut.n_bins} bins at oversample {zlut.oversample} but tracking "
                f"uses {n_bins} at {cfg.oversample}: set n_bins/oversample to the table's"
            )
        spp = zlut.samples_per_px
    else:
        spp = cfg.samples_per_px
    prof, counts, score = radial_kernel(img, x, y, n_bins, cfg.oversample, spp, True)
    asym = ~(score >= cfg.min_symmetry) & (flags == 0)
    flags |= torch.where(asym, int(TrackFlag.XY_FAILED), 0).to(torch.int32)

    nan = torch.full_like(x, float("nan"))
    if zlut is not None:
        n_tab = zlut.n_tables
        zf, lf = zlut.fine(cfg.lut_upsample, device=img.device)
        z, r, zflags = lookup_kernel(
            prof.reshape(-1, n_tab, n_bins),
            counts.reshape(-1, n_tab, n_bins),
            zf,
            lf,
            upsample=cfg.lut_upsample,
            min_correlation=cfg.min_correlation,
        )
        z = z.reshape(n).to(x.dtype)
        r = r.reshape(n).to(x.dtype)
        flags |= torch.where(flags == 0, zflags.reshape(n), 0).to(torch.int32)
    else:
        z = nan.clone()
        r = nan.clone()
    xy_bad = (flags & ~int(TrackFlag.Z_OUT_OF_RANGE | TrackFlag.Z_LOW_CORRELATION)) != 0
    x = torch.where(xy_bad, nan, x)
    y = torch.where(xy_bad, nan, y)
    z = torch.where(flags != 0, nan, z)
    r = torch.where(xy_bad, nan, r)
    prof = torch.where(xy_bad[:, None], torch.full_like(prof, float("nan")), prof)
    counts = torch.where(xy_bad[:, None], torch.zeros_like(counts), counts)
    return {
        "x": x,
        "y": y,
        "z": z,
        "flags": flags,
        "r": r,
        "symmetry": score,
        "profiles": prof,
        "counts": counts,
    }


def track_stack(
    stack: Any,
    zlut: ZLUT | None = None,
    *,
    config: TrackConfig | None = None,
    **overrides: Any,
) -> TrackResult:
    """Track beads in ROI images: x, y (and z with a Z-LUT) per image, with quality flags.

    Parameters
    ----------
    stack
        `(..., H, W)` ROI images, bead roughly central; float or integer camera frames
        (NumPy, CuPy or torch; never modified). With a per-bead :class:`ZLUT` of ``n_beads``
        tables the last batch axis is the bead: `(..., n_beads, H, W)`.
    zlut
        Reference table; ``None`` tracks x, y only (z NaN).
    config
        :class:`TrackConfig`; keyword ``overrides`` replace single fields.

    Returns
    -------
    TrackResult
        Arrays of the input's kind and device, batch shape `(...)`.
    """
    cfg = _resolve_config(config, overrides)
    t, restore = unwrap(stack, name="stack")
    if t.ndim < 2 or t.shape[-1] < 8 or t.shape[-2] < 8:
        raise InputError(
            f"stack must be ROI images (..., H, W) with H, W >= 8, got {tuple(t.shape)}"
        )
    h, w = t.shape[-2:]
    lead = tuple(t.shape[:-2])
    n_tab = zlut.n_tables if zlut is not None else 1
    if n_tab > 1 and (len(lead) == 0 or lead[-1] != n_tab):
        raise InputError(
            f"per-bead Z-LUT has {n_tab} tables: stack must be (..., {n_tab}, H, W), "
            f"got {tuple(t.shape)}"
        )
    img_all = t.reshape(-1, h, w)
    out = run_batched(img_all, cfg, zlut)
    n_bins = out["profiles"].shape[-1]
    res = {
        k: (v.reshape(*lead, n_bins) if v.ndim == 2 else v.reshape(lead)) for k, v in out.items()
    }
    res = restore(res)
    return TrackResult(**res)


def crop_rois(frames: Any, rois: Any, size: int | None = None) -> Any:
    """Cut square ROIs out of frames in one gather.

    Parameters
    ----------
    frames
        `(..., H, W)` frames (not modified).
    rois
        `(n_rois, 4)` integer ``[top, bottom, left, right]`` (MagTrack's ROI rows), or
        `(n_rois, 2)` integer top-left corners ``[top, left]`` with ``size``.
    size
        ROI width for corner ROIs.

    Returns
    -------
    `(..., n_rois, w, w)` crops, same kind and dtype as ``frames``.
    """
    f, restore = unwrap(frames, name="frames")
    r = torch.as_tensor(as_numpy(rois)).to(torch.int64)
    if r.ndim != 2 or r.shape[1] not in (2, 4):
        raise InputError(
            "rois must be (n, 4) [top, bottom, left, right] or (n, 2) corners, "
            f"got {tuple(r.shape)}"
        )
    if r.shape[1] == 4:
        hs = r[:, 1] - r[:, 0]
        ws = r[:, 3] - r[:, 2]
        if not (bool((hs == ws).all()) and bool((hs == hs[0]).all()) and int(hs[0]) > 0):
            raise InputError("all ROIs must be squares of the same size (bottom-top == right-left)")
        wdt = int(hs[0])
        tops, lefts = r[:, 0], r[:, 2]
    else:
        if size is None or size < 1:
            raise InputError("corner ROIs (n, 2) need a positive size")
        wdt = int(size)
        tops, lefts = r[:, 0], r[:, 1]
    h, w = f.shape[-2:]
    if bool(
        (tops < 0).any() | (lefts < 0).any() | (tops + wdt > h).any() | (lefts + wdt > w).any()
    ):
        raise InputError(
            f"an ROI of size {wdt} extends outside the {h}x{w} frame: move or shrink it"
        )
    ar = torch.arange(wdt)
    rows = (tops[:, None] + ar).to(f.device)  # (n_rois, w)
    cols = (lefts[:, None] + ar).to(f.device)
    out = f[..., rows[:, :, None], cols[:, None, :]]
    return restore(out)


def build_zlut(
    stack: Any,
    z: Any,
    *,
    z_step: float | None = None,
    per_bead: bool | None = None,
    config: TrackConfig | None = None,
    center: Literal["track", "roi"] = "track",
    units: str = "nm",
    **overrides: Any,
) -> ZLUT:
    """Build a Z look-up table from a focus sweep.

    Parameters
    ----------
    stack
        `(n_frames, H, W)` one bead, or `(n_frames, n_beads, H, W)` several beads (ROIs).
    z
        `(n_frames,)` stage (focus) position of each frame, in ``units``.
    z_step
        Group frames into planes of this width (frames with stage positions closer than
        ``z_step / 2`` to a plane centre are averaged). ``None``: one plane per distinct z.
    per_bead
        One table per bead (default for several beads) or one table averaged over beads.
    config
        Tracking settings (profile geometry: ``n_bins``, ``oversample``, ``samples_per_px``).
    center
        ``"track"`` measures profiles at the tracked sub-pixel centre of each frame (what a
        real sweep needs); ``"roi"`` uses the ROI centre pixel ``(W // 2, H // 2)``.
    units
        Unit of ``z`` stored in the table.

    Returns
    -------
    ZLUT
        Planes sorted by z; each plane is the count-weighted mean profile of its frames (NaN
        frames skipped) and the mean stage z of those frames.
    """
    cfg = _resolve_config(config, overrides)
    t, _ = unwrap(stack, name="stack")
    zt = unwrap(z, name="z")[0].to(torch.float64).reshape(-1).cpu()
    if t.ndim not in (3, 4):
        raise InputError(
            f"stack must be (n_frames, H, W) or (n_frames, n_beads, H, W), got {tuple(t.shape)}"
        )
    if zt.shape[0] != t.shape[0]:
        raise InputError(f"z has {zt.shape[0]} values for {t.shape[0]} frames: give one per frame")
    if not bool(torch.isfinite(zt).all()):
        raise InputError("z contains NaN/Inf: give the stage position of every frame")
    if t.ndim == 3:
        t = t[:, None]
    n_frames, n_beads, h, w = t.shape
    if per_bead is None:
        per_bead = n_beads > 1
    dtype = _DTYPES[cfg.dtype]
    img = t.reshape(-1, h, w).to(dtype)
    n_bins = cfg.n_bins or (min(h, w) // 2) * cfg.oversample
    if center == "track":
        out = run_batched(img, cfg.model_copy(update={"n_bins": n_bins}), None)
        prof, counts = out["profiles"], out["counts"]
    elif center == "roi":
        cx = torch.full((img.shape[0],), float(w // 2), dtype=dtype, device=img.device)
        cy = torch.full((img.shape[0],), float(h // 2), dtype=dtype, device=img.device)
        with cpu_threads(cfg.cpu_threads, img.device):
            prof, counts = radial_kernel(img, cx, cy, n_bins, cfg.oversample, cfg.samples_per_px)
    else:
        raise InputError(f"center must be 'track' or 'roi', got {center!r}")
    prof = prof.to(torch.float64).cpu().reshape(n_frames, n_beads, n_bins)
    counts = counts.to(torch.float64).cpu().reshape(n_frames, n_beads, n_bins)
    good = torch.isfinite(prof)
    counts = counts * good
    prof = torch.nan_to_num(prof, nan=0.0)

    if z_step is None:
        planes, inverse = torch.unique(zt, sorted=True, return_inverse=True)
    else:
        if z_step <= 0:
            raise InputError(f"z_step must be positive, got {z_step}")
        key = torch.round((zt - zt.min()) / z_step).to(torch.int64)
        _, inverse = torch.unique(key, sorted=True, return_inverse=True)
        planes = None
    n_planes = int(inverse.max()) + 1
    num = torch.zeros((n_planes, n_beads, n_bins), dtype=torch.float64).index_add_(
        0, inverse, prof * counts
    )
    den = torch.zeros((n_planes, n_beads, n_bins), dtype=torch.float64).index_add_(
        0, inverse, counts
    )
    zsum = torch.zeros(n_planes, dtype=torch.float64).index_add_(0, inverse, zt)
    zcnt = torch.zeros(n_planes, dtype=torch.float64).index_add_(0, inverse, torch.ones_like(zt))
    z_planes = zsum / zcnt if planes is None else planes
    if not per_bead:
        num = num.sum(1, keepdim=True)
        den = den.sum(1, keepdim=True)
    table = num / den  # (n_planes, L, n_bins)
    bad_plane = ~torch.isfinite(table).all(dim=-1).all(dim=-1)
    if bool(bad_plane.all()):
        raise InputError("no usable frame in the focus sweep (all blank, NaN or bead at the edge)")
    keep = ~bad_plane
    table = table[keep]
    z_planes = z_planes[keep]
    profiles = table.permute(1, 0, 2)  # (L, n_planes, n_bins)
    if profiles.shape[0] == 1:
        profiles = profiles[0]
    return ZLUT(
        z=z_planes.numpy(),
        profiles=profiles.numpy(),
        oversample=cfg.oversample,
        samples_per_px=cfg.samples_per_px,
        units=units,
        metadata={
            "built_from": "focus sweep",
            "n_frames": int(n_frames),
            "n_beads": int(n_beads),
            "center": center,
            "planes_dropped": int(bad_plane.sum()),
            "roi_size": [int(h), int(w)],
        },
    )
