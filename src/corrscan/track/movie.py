"""Track beads through a TIFF movie in chunks; read ROI tables; build Z-LUTs from sweeps.

Frame pixel coordinates: x = column, y = row of the whole frame (origin at the first pixel's
centre); the tables add each ROI's left/top offset to the ROI-local positions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from corrscan.core.io.tiff import iter_tiff_frames, tiff_shape
from corrscan.core.progress import track as progress_track
from corrscan.errors import FileFormatError, InputError
from corrscan.track.pipeline import TrackConfig, build_zlut, crop_rois, track_stack
from corrscan.track.zlut import ZLUT

__all__ = ["read_rois", "track_movie", "zlut_from_sweep"]


def read_rois(path: str | os.PathLike, *, roi_size: int | None = None) -> tuple[np.ndarray, list]:
    """Read an ROI table (CSV).

    Accepted columns: ``top, bottom, left, right`` (MagTrack's ROI rows; squares of one size),
    or ``x, y`` (bead centres in frame pixels; the ROI is ``roi_size`` wide, its top-left at
    ``round(y) - roi_size // 2``, ``round(x) - roi_size // 2``). An optional ``bead`` column
    names the beads (default 0, 1, ...).

    Returns
    -------
    rois
        `(n_beads, 4)` int64 ``[top, bottom, left, right]``.
    beads
        Bead names.
    """
    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"ROI table not found: {p}")
    try:
        df = pd.read_csv(p)
    except Exception as exc:
        raise FileFormatError(f"cannot read ROI table {p} as CSV: {exc}") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    if len(df) == 0:
        raise FileFormatError(f"ROI table {p} has no rows")
    if {"top", "bottom", "left", "right"} <= set(df.columns):
        rois = df[["top", "bottom", "left", "right"]].to_numpy()
    elif {"x", "y"} <= set(df.columns):
        if roi_size is None or roi_size < 8:
            raise InputError(f"ROI table {p} gives centres (x, y): pass an ROI size >= 8 px")
        xy = df[["x", "y"]].to_numpy(dtype=np.float64)
        top = np.round(xy[:, 1]).astype(np.int64) - roi_size // 2
        left = np.round(xy[:, 0]).astype(np.int64) - roi_size // 2
        rois = np.stack([top, top + roi_size, left, left + roi_size], axis=1)
    else:
        raise FileFormatError(
            f"ROI table {p} needs columns top,bottom,left,right or x,y; has {list(df.columns)}"
        )
    if not np.all(np.isfinite(rois.astype(np.float64))):
        raise FileFormatError(f"ROI table {p} has empty or non-numeric cells")
    beads = df["bead"].tolist() if "bead" in df.columns else list(range(len(df)))
    return rois.astype(np.int64), beads


def _chunks(path: Path, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    yield from iter_tiff_frames(path, chunk)


def track_movie(
    movie: str | os.PathLike,
    rois: Any,
    zlut: ZLUT | None = None,
    *,
    beads: list | None = None,
    config: TrackConfig | None = None,
    chunk: int = 256,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Track every bead in every frame of a TIFF movie.

    Parameters
    ----------
    movie
        TIFF stack `(n_frames, H, W)` (integer camera frames or float).
    rois
        `(n_beads, 4)` ``[top, bottom, left, right]`` squares of one size.
    zlut
        Shared or per-bead (in ROI order) table; ``None``: x, y only.
    beads
        Bead names (default 0, 1, ...).
    config
        :class:`TrackConfig`.
    chunk
        Frames read and tracked per vectorised batch.
    progress
        Progress bar (``None``: on for a terminal).

    Returns
    -------
    DataFrame with columns ``frame, bead, x, y, z, flags, r`` (x, y in frame pixels, z in the
    table's units), one row per frame and bead, frame-major.
    """
    path = Path(movie)
    shape = tiff_shape(path)
    n_frames = 1 if len(shape) == 2 else int(np.prod(shape[:-2]))
    r = np.asarray(rois, dtype=np.int64)
    if r.ndim != 2 or r.shape[1] != 4:
        raise InputError(f"rois must be (n_beads, 4) [top, bottom, left, right], got {r.shape}")
    n_beads = r.shape[0]
    names = list(range(n_beads)) if beads is None else list(beads)
    if zlut is not None and zlut.n_tables not in (1, n_beads):
        raise InputError(
            f"the Z-LUT has {zlut.n_tables} per-bead tables but there are {n_beads} ROIs"
        )
    n_chunks = -(-n_frames // int(chunk))
    parts = []
    for start, frames in progress_track(
        _chunks(path, int(chunk)),
        total=n_chunks,
        description="tracking",
        unit="chunk",
        enabled=progress,
    ):
        crops = crop_rois(frames, r)  # (c, n_beads, w, w)
        res = track_stack(crops, zlut, config=config)
        c = crops.shape[0]
        parts.append(
            pd.DataFrame(
                {
                    "frame": np.repeat(np.arange(start, start + c), n_beads),
                    "bead": np.tile(np.asarray(names, dtype=object), c),
                    "x": (res.x + r[None, :, 2]).reshape(-1),
                    "y": (res.y + r[None, :, 0]).reshape(-1),
                    "z": np.asarray(res.z, dtype=np.float64).reshape(-1),
                    "flags": np.asarray(res.flags).reshape(-1),
                    "r": np.asarray(res.r, dtype=np.float64).reshape(-1),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def zlut_from_sweep(
    sweep: str | os.PathLike,
    rois: Any,
    z: Any,
    *,
    per_bead: bool = True,
    z_step: float | None = None,
    config: TrackConfig | None = None,
    units: str = "nm",
) -> ZLUT:
    """Z-LUT from a focus-sweep TIFF: ROIs cut from every frame, profiles at the tracked
    centres averaged per stage position (see :func:`corrscan.track.build_zlut`).

    Parameters
    ----------
    sweep
        TIFF stack `(n_frames, H, W)`.
    rois
        `(n_beads, 4)` ROI rows.
    z
        `(n_frames,)` stage position of each frame.
    per_bead
        One table per bead (ROI order) or one shared table.
    z_step, config, units
        As :func:`corrscan.track.build_zlut`.
    """
    frames = [f for _, f in iter_tiff_frames(sweep, 512)]
    stack = np.concatenate(frames, axis=0)
    crops = crop_rois(stack, np.asarray(rois, dtype=np.int64))  # (n_frames, n_beads, w, w)
    lut = build_zlut(crops, z, z_step=z_step, per_bead=per_bead, config=config, units=units)
    lut.metadata["sweep"] = str(sweep)
    return lut
