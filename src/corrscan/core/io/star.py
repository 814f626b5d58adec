"""STAR files (starfile) and RELION 4 / RELION 5 particle column names.

corrscan particle tables (pandas DataFrames) use these columns; :func:`relion_particles`
renames/converts them to RELION's, :func:`from_relion` goes back.

=====================  ====================================  ===================================
corrscan column        RELION 4                              RELION 5 (tomography)
=====================  ====================================  ===================================
``x, y, z``            ``rlnCoordinateX/Y/Z`` (pixels)       ``rlnCenteredCoordinateX/Y/ZAngst``
                                                             = ``(coord - size/2) * pixel_size``
``phi, theta, psi``    ``rlnAngleRot/Tilt/Psi`` (degrees, ZYZ)
``score``              ``rlnAutopickFigureOfMerit``
``micrograph``         ``rlnMicrographName``
``tomogram``           ``rlnTomoName``
``defocus_u/v``        ``rlnDefocusU/V`` (Å)
``astigmatism_angle``  ``rlnDefocusAngle`` (degrees)
``pixel_size``         ``rlnImagePixelSize`` (Å)
``class_number``       ``rlnClassNumber``
=====================  ====================================  ===================================

2-D tables (no ``z``) keep ``rlnCoordinateX/Y`` in pixels for both versions (RELION 5
centred Å coordinates exist for tomography only). Positions are 0-based pixel indices, origin at
the first pixel's centre (corrscan convention); other columns pass through unchanged.
"""

from __future__ import annotations

import os
import shlex
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from corrscan.core.io._util import atomic_path, require_file
from corrscan.errors import FileFormatError, InputError

__all__ = [
    "RELION_COLUMNS",
    "from_relion",
    "read_star",
    "relion_particles",
    "write_star",
]

RELION_COLUMNS: dict[str, str] = {
    "x": "rlnCoordinateX",
    "y": "rlnCoordinateY",
    "z": "rlnCoordinateZ",
    "phi": "rlnAngleRot",
    "theta": "rlnAngleTilt",
    "psi": "rlnAnglePsi",
    "score": "rlnAutopickFigureOfMerit",
    "micrograph": "rlnMicrographName",
    "tomogram": "rlnTomoName",
    "defocus_u": "rlnDefocusU",
    "defocus_v": "rlnDefocusV",
    "astigmatism_angle": "rlnDefocusAngle",
    "pixel_size": "rlnImagePixelSize",
    "class_number": "rlnClassNumber",
}
"""corrscan column -> RELION 4 column."""

_CENTERED = {
    "x": "rlnCenteredCoordinateXAngst",
    "y": "rlnCenteredCoordinateYAngst",
    "z": "rlnCenteredCoordinateZAngst",
}


def _validate_star_text(p: Path, text: str) -> None:
    """Check that every loop row has as many fields as the loop has columns."""
    lines = text.splitlines()
    i, n = 0, len(lines)
    if not any(ln.strip().startswith("data_") for ln in lines):
        raise FileFormatError(f"{p} is not a STAR file: no data_ block")
    while i < n:
        if lines[i].strip() == "loop_":
            i += 1
            ncol = 0
            while i < n and (lines[i].strip().startswith("_") or not lines[i].strip()):
                if lines[i].strip():
                    ncol += 1
                i += 1
            while i < n:
                s = lines[i].strip()
                if not s or s.startswith("#"):
                    i += 1
                    continue
                if s.startswith(("data_", "loop_", "_")):
                    break
                try:
                    nf = (
                        len(shlex.split(s, posix=True))
                        if ('"' in s or "'" in s)
                        else len(s.split())
                    )
                except ValueError:
                    nf = -1
                if nf != ncol:
                    raise FileFormatError(
                        f"{p} line {i + 1}: {nf} fields for a loop of {ncol} columns "
                        "(truncated or corrupt STAR file)"
                    )
                i += 1
            continue
        i += 1


def read_star(path: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Read all data blocks of a STAR file.

    Returns
    -------
    dict
        ``{block name: DataFrame}`` (key/value blocks become one-row DataFrames); column names
        without the leading underscore (``rlnCoordinateX``).

    Raises
    ------
    FileFormatError
        Missing, unreadable, truncated (a loop row with missing fields) or malformed files.
    """
    import starfile

    p = require_file(path, "STAR")
    try:
        text = p.read_text()
    except (UnicodeDecodeError, OSError) as exc:
        raise FileFormatError(f"{p} is not a readable STAR text file: {exc}") from None
    _validate_star_text(p, text)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(p, always_dict=True)
    except Exception as exc:  # starfile/pandas raise many kinds of errors
        raise FileFormatError(f"{p} is not a valid STAR file: {exc}") from None
    out: dict[str, pd.DataFrame] = {}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            out[str(name)] = block
        elif isinstance(block, Mapping):
            out[str(name)] = pd.DataFrame({k: [v] for k, v in block.items()})
        else:
            raise FileFormatError(f"{p}: unexpected block {name!r} of type {type(block).__name__}")
    if not out:
        raise FileFormatError(f"{p} contains no data blocks")
    return out


def write_star(
    path: str | os.PathLike,
    tables: Mapping[str, pd.DataFrame] | pd.DataFrame,
    *,
    overwrite: bool = True,
    float_format: str = "%.6f",
) -> Path:
    """Write DataFrames as STAR data blocks (atomic: temporary sibling, then rename).

    Parameters
    ----------
    path
        Destination ``.star`` file.
    tables
        ``{block name: DataFrame}`` (a single DataFrame is written as block ``particles``).
        Column names without the leading underscore.
    overwrite
        Replace an existing file (default).
    float_format
        printf format of floating columns.
    """
    import starfile

    if isinstance(tables, pd.DataFrame):
        tables = {"particles": tables}
    if not tables:
        raise InputError("write_star needs at least one table")
    for name, df in tables.items():
        if not isinstance(df, pd.DataFrame):
            raise InputError(f"STAR block {name!r} must be a DataFrame, got {type(df).__name__}")
    dest = Path(path)
    with atomic_path(dest, overwrite=overwrite, what="STAR file") as tmp:
        try:
            starfile.write(dict(tables), tmp, float_format=float_format)
        except OSError as exc:
            raise FileFormatError(f"cannot write STAR file {dest}: {exc}") from None
    return dest


def _shape_xyz(volume_shape: Sequence[int] | None) -> dict[str, float] | None:
    if volume_shape is None:
        return None
    vs = tuple(int(s) for s in volume_shape)
    if len(vs) != 3:
        raise InputError(f"volume_shape must be (D, H, W), got {volume_shape!r}")
    return {"z": float(vs[0]), "y": float(vs[1]), "x": float(vs[2])}


def relion_particles(
    df: pd.DataFrame,
    *,
    version: int = 4,
    pixel_size: float | None = None,
    volume_shape: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Rename (and for RELION 5 tomography, convert) corrscan columns to RELION's.

    Parameters
    ----------
    df
        corrscan particle table (see the module docstring).
    version
        4 or 5.
    pixel_size
        Å per pixel; needed for RELION 5 3-D tables unless ``df`` has ``pixel_size``.
    volume_shape
        `(D, H, W)` of the tomogram; needed for RELION 5 3-D tables (centred coordinates).

    Returns
    -------
    DataFrame
        New table with RELION column names (unknown columns unchanged).
    """
    if version not in (4, 5):
        raise InputError(f"RELION version must be 4 or 5, got {version!r}")
    out = df.copy()
    three_d = "z" in out.columns
    if version == 5 and three_d:
        shp = _shape_xyz(volume_shape)
        if shp is None:
            raise InputError("RELION 5 tomography tables need volume_shape=(D, H, W)")
        if pixel_size is None:
            if "pixel_size" not in out.columns:
                raise InputError("RELION 5 tomography tables need pixel_size (Å)")
            ps: Any = out["pixel_size"].to_numpy(dtype=np.float64)
        else:
            ps = float(pixel_size)
        for ax in ("x", "y", "z"):
            if ax not in out.columns:
                raise InputError(f"3-D table is missing column {ax!r}")
            out[_CENTERED[ax]] = (out[ax].to_numpy(dtype=np.float64) - shp[ax] / 2.0) * ps
        out = out.drop(columns=["x", "y", "z"])
        order = [_CENTERED[a] for a in ("x", "y", "z")]
        out = out[order + [c for c in out.columns if c not in order]]
    return out.rename(columns={k: v for k, v in RELION_COLUMNS.items() if k in out.columns})


def from_relion(
    df: pd.DataFrame,
    *,
    pixel_size: float | None = None,
    volume_shape: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Inverse of :func:`relion_particles`: RELION 4 or 5 columns -> corrscan columns.

    RELION 5 centred Å coordinates are converted back to pixels with ``pixel_size`` (or the
    ``rlnImagePixelSize`` / ``pixel_size`` column) and ``volume_shape``.
    """
    out = df.rename(columns={v: k for k, v in RELION_COLUMNS.items() if v in df.columns})
    if any(c in out.columns for c in _CENTERED.values()):
        shp = _shape_xyz(volume_shape)
        if shp is None:
            raise InputError("RELION 5 centred coordinates need volume_shape=(D, H, W)")
        if pixel_size is None:
            if "pixel_size" not in out.columns:
                raise InputError("RELION 5 centred coordinates need pixel_size (Å)")
            ps: Any = out["pixel_size"].to_numpy(dtype=np.float64)
        else:
            ps = float(pixel_size)
        new = {}
        for ax in ("x", "y", "z"):
            col = _CENTERED[ax]
            if col not in out.columns:
                raise InputError(f"RELION 5 table is missing {col}")
            new[ax] = out[col].to_numpy(dtype=np.float64) / ps + shp[ax] / 2.0
        out = out.drop(columns=list(_CENTERED.values()))
        for i, ax in enumerate(("x", "y", "z")):
            out.insert(i, ax, new[ax])
    return out
