"""Particle picks (match3d/match2d tables, RELION STAR) for Neuroglancer annotation layers.

Column conventions (RELION):

- positions: ``rlnCoordinateX/Y/Z`` in pixels (origin at the first voxel's centre), or RELION 5
  ``rlnCenteredCoordinateX/Y/ZAngst`` in Å relative to the tomogram centre (index ``N // 2``),
  converted with ``voxel_size`` and ``shape``; a 2-D table (no Z) gets ``z = 0``;
- orientations: ``rlnAngleRot/Tilt/Psi`` = ``(phi, theta, psi)`` ZYZ degrees, corrscan's
  convention (:func:`corrscan.core.rotations.euler_to_matrix`);
- score: the first present of :data:`SCORE_COLUMNS`.
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

SCORE_COLUMNS: tuple[str, ...] = (
    "rlnAutopickFigureOfMerit",
    "rlnScore",
    "rlnLCCmax",
    "rlnMaxValueProbDistribution",
    "score",
    "snr",
    "zscore",
)


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
        if isinstance(df, pd.DataFrame) and (
            "rlnCoordinateX" in df.columns or "rlnCenteredCoordinateXAngst" in df.columns
        ):
            return df
    raise FileFormatError(
        f"{source}: no table with rlnCoordinateX/Y(/Z) or rlnCenteredCoordinateX/Y/ZAngst columns"
    )


def picks_from_table(
    df: pd.DataFrame,
    *,
    voxel_size: float | Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    source: str = "table",
) -> Picks:
    """:class:`Picks` from a DataFrame with RELION column names (see the module docstring)."""
    cols = set(df.columns)
    if {"rlnCoordinateX", "rlnCoordinateY"} <= cols:
        x = df["rlnCoordinateX"].to_numpy(np.float64)
        y = df["rlnCoordinateY"].to_numpy(np.float64)
        z = (
            df["rlnCoordinateZ"].to_numpy(np.float64)
            if "rlnCoordinateZ" in cols
            else np.zeros_like(x)
        )
    elif {"rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst"} <= cols:
        if voxel_size is None or shape is None:
            raise InputError(
                f"{source}: rlnCenteredCoordinate*Angst columns need the voxel size and the "
                "tomogram shape to become voxel positions"
            )
        vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))  # z, y, x
        sh = tuple(int(s) for s in shape)
        if len(sh) == 2:
            sh = (1, *sh)
        x = df["rlnCenteredCoordinateXAngst"].to_numpy(np.float64) / vs[2] + sh[2] // 2
        y = df["rlnCenteredCoordinateYAngst"].to_numpy(np.float64) / vs[1] + sh[1] // 2
        zc = "rlnCenteredCoordinateZAngst"
        z = df[zc].to_numpy(np.float64) / vs[0] + sh[0] // 2 if zc in cols else np.zeros_like(x)
    else:
        raise InputError(
            f"{source}: needs rlnCoordinateX/Y(/Z) or rlnCenteredCoordinateX/Y/ZAngst columns"
        )
    coords = np.stack([z, y, x], axis=1)
    angles = None
    if {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"} <= cols:
        angles = df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(np.float64)
    scores = None
    for name in SCORE_COLUMNS:
        if name in cols:
            scores = df[name].to_numpy(np.float64)
            break
    if not np.all(np.isfinite(coords)):
        raise InputError(f"{source}: non-finite particle coordinates")
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
        try:
            from corrscan.core.io.star import read_star  # type: ignore[import-not-found]
        except ImportError:  # pragma: no cover - before core io lands
            import starfile

            def read_star(p: Path) -> dict[str, pd.DataFrame]:
                return starfile.read(p, always_dict=True)

        try:
            tables = read_star(path)
        except (FileFormatError, InputError):
            raise
        except Exception as exc:
            raise FileFormatError(f"{path}: not a readable STAR file ({exc})") from None
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
