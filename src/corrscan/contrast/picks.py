"""Particle picks (match3d/match2d tables, RELION STAR) for Neuroglancer annotation layers.

Accepted tables (pandas DataFrames, STAR or CSV files):

- corrscan particle tables: columns ``x, y(, z)`` (pixels, origin at the first voxel's centre),
  optional ``phi, theta, psi`` (ZYZ degrees) and ``score`` (what match3d/match2d write);
- RELION 4 (``rlnCoordinateX/Y/Z`` pixels) and RELION 5 tomography tables
  (``rlnCenteredCoordinateX/Y/ZAngst``, converted with the voxel size and the tomogram shape),
  through :func:`corrscan.core.io.star.from_relion`; ``rlnAngleRot/Tilt/Psi`` are
  ``(phi, theta, psi)``; the score is the first present of :data:`SCORE_COLUMNS`.

A 2-D table (no z) gets ``z = 0``. Angles follow corrscan's convention
(:func:`corrscan.core.rotations.euler_to_matrix`).

RELION 5 centred coordinates: ``index = centred_Å / voxel_size + N / 2`` per axis, with
``N`` the tomogram's size along that axis and the voxel size of the tomogram being viewed
(RELION's tomogram centre is ``N / 2`` in float division, its coordinates 0-based voxel
indices). For even ``N`` that centre is corrscan's centre voxel ``N // 2``; for odd ``N`` it is
``N // 2 + 0.5``, half a voxel beyond it (RELION's rule is kept so that coordinates written
by RELION 5 land on the right voxel). ``voxel_size`` and ``shape`` must describe the tomogram
the picks were made on (binned tomogram: its binned voxel size and shape).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from corrscan.errors import FileFormatError, InputError

__all__ = ["SCORE_COLUMNS", "Picks", "particle_axes", "picks_from_table", "read_picks"]

#: Score columns, first present wins (corrscan's ``score`` is RELION's figure of merit).
SCORE_COLUMNS: tuple[str, ...] = (
    "score",
    "rlnScore",
    "rlnLCCmax",
    "rlnMaxValueProbDistribution",
    "snr",
    "zscore",
)

_POSITION_COLUMNS = ("x", "rlnCoordinateX", "rlnCenteredCoordinateXAngst")


@dataclass(frozen=True)
class Picks:
    """Particle positions (and optionally orientations and scores).

    Attributes
    ----------
    coordinates
        `(n, 3)` float64 ``(z, y, x)`` voxel positions.
    angles
        `(n, 3)` ``(phi, theta, psi)`` degrees, or ``None``.
    scores
        `(n,)` float64 or ``None``.
    """

    coordinates: np.ndarray
    angles: np.ndarray | None = None
    scores: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.coordinates.shape[0])


def _pick_block(tables: dict[str, pd.DataFrame] | pd.DataFrame, source: str) -> pd.DataFrame:
    if isinstance(tables, pd.DataFrame):
        return tables
    for name in ("particles", *tables.keys()):
        df = tables.get(name)
        if isinstance(df, pd.DataFrame) and any(c in df.columns for c in _POSITION_COLUMNS):
            return df
    raise FileFormatError(
        f"{source}: no table with x/y(/z), rlnCoordinateX/Y(/Z) or "
        "rlnCenteredCoordinateX/Y/ZAngst columns"
    )


def picks_from_table(
    df: pd.DataFrame,
    *,
    voxel_size: float | Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    source: str = "table",
) -> Picks:
    """:class:`Picks` from a corrscan or RELION particle table (see the module docstring).

    Parameters
    ----------
    voxel_size
        Å (scalar or ``(z, y, x)``; RELION 5 uses one pixel size, x's is taken).
    shape
        ``(z, y, x)`` of the tomogram (RELION 5 centred coordinates: the origin is the
        tomogram centre ``N / 2`` of each axis, see the module docstring).
    """
    from corrscan.core.io.star import from_relion

    ps = None
    if voxel_size is not None:
        ps = float(np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))[2])
    sh = None
    if shape is not None:
        sh = tuple(int(s) for s in shape)
        sh = (1, *sh) if len(sh) == 2 else sh
    try:
        t = from_relion(df, pixel_size=ps, volume_shape=sh)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    if not {"x", "y"} <= set(t.columns):
        raise InputError(f"{source}: needs x/y(/z) or RELION coordinate columns")
    x = t["x"].to_numpy(np.float64)
    y = t["y"].to_numpy(np.float64)
    z = t["z"].to_numpy(np.float64) if "z" in t.columns else np.zeros_like(x)
    coords = np.stack([z, y, x], axis=1)
    if not np.all(np.isfinite(coords)):
        raise InputError(f"{source}: non-finite particle coordinates")
    angles = None
    if {"phi", "theta", "psi"} <= set(t.columns):
        angles = t[["phi", "theta", "psi"]].to_numpy(np.float64)
    scores = None
    for name in SCORE_COLUMNS:
        if name in t.columns:
            scores = t[name].to_numpy(np.float64)
            break
    return Picks(coords, angles, scores)


def read_picks(
    path: str | os.PathLike[str],
    *,
    voxel_size: float | Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
) -> Picks:
    """Read picks from a STAR file (``particles`` block, or the first block with coordinates)
    or a CSV with the same column names."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: picks file not found")
    tables: Any
    if path.suffix.lower() == ".csv":
        tables = pd.read_csv(path)
    else:
        from corrscan.core.io.star import read_star

        tables = read_star(path)
    df = _pick_block(tables, str(path))
    return picks_from_table(df, voxel_size=voxel_size, shape=shape, source=str(path))


def particle_axes(angles: np.ndarray) -> np.ndarray:
    """`(n, 3, 3)` particle axes in the tomogram: ``axes[i, k]`` is the direction of the
    reference's axis ``k`` (0 = x, 1 = y, 2 = z) for particle ``i``, a ``(x, y, z)`` unit vector.

    In corrscan's convention the particle is the reference actively rotated by ``R^T``
    (:mod:`corrscan.core.rotations`), so reference axis ``e_k`` lies along ``R^T e_k`` = row
    ``k`` of ``R``.
    """
    from corrscan.core.rotations import euler_to_matrix

    r = np.asarray(euler_to_matrix(np.asarray(angles, dtype=np.float64)), dtype=np.float64)
    return r  # axes[i, k] = row k of R_i = R_i^T e_k
