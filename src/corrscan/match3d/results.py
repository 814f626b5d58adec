"""Result of a 3D search: maps, rotation table, statistics; peaks, tables and bundles.

Bundle layout (a :mod:`corrscan.core.io.bundle` folder, written to ``<path>.partial-<pid>``
and renamed when complete, so an interrupted run never leaves a finished-looking result; an
existing bundle raises :class:`~corrscan.errors.ResultExistsError` unless ``overwrite``; no
pickle)::

    result/
      scores.mrc            max score over rotations, (D, H, W) float32, voxel size in Å
      rotation_index.mrc    index of the best rotation, (D, H, W) int16 (or uint16) MRC,
                            -1 where nothing was recorded; rotation_index.npy (int32)
                            when the indices fit neither (from 32768 rotations on)
      rotations.csv         index, 3x3 matrix (r00..r22), RELION rot/tilt/psi
      metadata.json         the core bundle document (format, versions, voxel size, maps,
                            tables); under "metadata": result_format, pixel_size, score_mean,
                            score_std, score_count, template_shape and "search" (the search
                            settings, n_rotations, timings)

Tables (:meth:`MatchResult.peaks`) are pandas DataFrames with voxel positions ``z, y, x``
(origin: first voxel's centre), Å positions, score, rotation index, the 3x3 matrix and RELION
angles; :func:`write_table` writes CSV, RELION 4 / 5 STAR or a Dynamo ``.tbl``
(:func:`read_table` reads them back).

RELION dialects: **4** ``_rlnCoordinateX/Y/Z`` in voxels (origin first voxel),
``_rlnAngleRot/Tilt/Psi``, ``_rlnTomoName``, ``_rlnDetectorPixelSize``; **5**
``_rlnCenteredCoordinateX/Y/ZAngst`` in Å from the tomogram centre (voxel ``N/2`` for even and
odd sizes alike: ``(index - N/2) * pixel_size``), the same angles, ``_rlnTomoName``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from corrscan.errors import CorrscanError, FileFormatError, InputError, ResultExistsError
from corrscan.match3d.rotations import matrices_to_relion_euler, relion_euler_to_matrices

__all__ = [
    "DYNAMO_COLUMNS",
    "RESULT_FORMAT",
    "MatchResult",
    "dynamo_euler_to_matrices",
    "matrices_to_dynamo_euler",
    "read_table",
    "write_table",
]

#: ``result_format`` of the match3d part of a bundle's ``metadata.json``
RESULT_FORMAT = "corrscan.match3d.result/2"


@dataclass
class MatchResult:
    """Maps and statistics of a 3D template search.

    Attributes
    ----------
    scores
        ``(D, H, W)`` float32 maximum score over rotations.
    rotation_index
        ``(D, H, W)`` int32 index into ``rotations`` (-1: nothing recorded).
    rotations
        ``(n, 3, 3)`` float32 template rotations (acting on ``(x, y, z)``).
    pixel_size
        Å per voxel.
    score_mean, score_std, score_count
        Mean, population std and number of all scores seen (voxels x rotations), over exactly
        the reported map (for :meth:`false_positive_cutoff`).
    template_shape
        ``(S0, S1, S2)``.
    metadata
        Settings, counts, timings.
    """

    scores: np.ndarray
    rotation_index: np.ndarray
    rotations: np.ndarray
    pixel_size: float
    score_mean: float
    score_std: float
    score_count: int
    template_shape: tuple[int, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_rotations(self) -> int:
        """Number of rotations searched."""
        return int(self.metadata.get("n_rotations", len(self.rotations)))

    def false_positive_cutoff(self, n_false_positives: float = 1.0) -> float:
        """Score above which ``n_false_positives`` noise peaks are expected over the search."""
        from corrscan.match3d.peaks import false_positive_cutoff

        return false_positive_cutoff(
            self.score_count, n_false_positives, mean=self.score_mean, std=self.score_std
        )

    def peaks(
        self,
        *,
        method: str = "maximum_filter",
        num_peaks: int = 1000,
        min_distance: int = 5,
        min_boundary_distance: int = 0,
        min_score: float | None = None,
        max_score: float | None = None,
        n_false_positives: float | None = None,
        subvoxel: bool = False,
        template_mask: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """Call peaks on the score map and return the orientations table.

        ``n_false_positives`` raises ``min_score`` to :meth:`false_positive_cutoff`.
        ``template_mask`` (``"recursive"`` only) suppresses the rotated mask around each peak.
        ``subvoxel`` adds parabolic sub-voxel positions (``z_sub, y_sub, x_sub``).
        """
        from corrscan.match3d.peaks import PeakCallerRecursiveMasking, call_peaks, subvoxel_refine

        if n_false_positives is not None:
            cut = self.false_positive_cutoff(n_false_positives)
            min_score = cut if min_score is None else max(min_score, cut)
        if method == "recursive" and template_mask is not None:
            caller = PeakCallerRecursiveMasking(
                self.scores.shape, num_peaks=num_peaks, min_distance=min_distance,
                min_boundary_distance=min_boundary_distance, min_score=min_score,
                max_score=max_score, mask=template_mask,
            )  # fmt: skip
            mapping = {i: r for i, r in enumerate(self.rotations)}
            caller(self.scores, rotations=self.rotation_index, rotation_mapping=mapping)
            coords, vals = caller.translations, caller.scores
        else:
            coords, vals = call_peaks(
                self.scores, method=method, num_peaks=num_peaks, min_distance=min_distance,
                min_boundary_distance=min_boundary_distance, min_score=min_score,
                max_score=max_score,
            )  # fmt: skip
        df = self.table(coords, vals)
        if subvoxel and len(df):
            sub, _ = subvoxel_refine(self.scores, coords)
            df["z_sub"], df["y_sub"], df["x_sub"] = sub[:, 0], sub[:, 1], sub[:, 2]
        return df

    def table(self, coords: np.ndarray, scores: np.ndarray | None = None) -> pd.DataFrame:
        """Orientations table for voxel ``coords`` ``(n, 3)`` ``(z, y, x)``."""
        c = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
        idx = self.rotation_index[tuple(c.T)] if len(c) else np.zeros(0, dtype=np.int32)
        s = self.scores[tuple(c.T)] if scores is None else np.asarray(scores)
        mats = self.rotations[np.clip(idx, 0, None)] if len(c) else np.zeros((0, 3, 3))
        eul = matrices_to_relion_euler(mats) if len(c) else np.zeros((0, 3))
        df = pd.DataFrame({
            "z": c[:, 0], "y": c[:, 1], "x": c[:, 2],
            "z_angstrom": c[:, 0] * self.pixel_size,
            "y_angstrom": c[:, 1] * self.pixel_size,
            "x_angstrom": c[:, 2] * self.pixel_size,
            "score": s.astype(np.float64),
            "rotation_index": idx.astype(np.int64),
            "rot": eul[:, 0], "tilt": eul[:, 1], "psi": eul[:, 2],
        })  # fmt: skip
        for i in range(3):
            for j in range(3):
                df[f"r{i}{j}"] = mats[:, i, j].astype(np.float64) if len(c) else []
        df.attrs["pixel_size"] = self.pixel_size
        df.attrs["shape"] = tuple(int(v) for v in self.scores.shape)
        return df

    # ------------------------------------------------------------------ bundles
    def write(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        tables: dict[str, pd.DataFrame] | None = None,
    ) -> Path:
        """Write the result bundle (see module docstring) with
        :func:`corrscan.core.io.bundle.write_bundle`; returns its path.

        ``tables`` are extra ``{name: DataFrame}`` written as ``<name>.csv`` (not
        ``rotations``). An existing bundle raises :class:`ResultExistsError` unless
        ``overwrite``; the parent folder is created.
        """
        from corrscan.core.io.bundle import write_bundle

        path = Path(path)
        extra = dict(tables or {})
        if "rotations" in extra:
            raise InputError("table name 'rotations' is reserved for the rotation table")
        if path.exists() and not overwrite:
            raise ResultExistsError(
                f"{path} already exists: pass overwrite=True to replace it or choose another path"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        rot = self.rotations.reshape(-1, 9).astype(np.float64)
        eul = matrices_to_relion_euler(self.rotations) if len(rot) else np.zeros((0, 3))
        rdf = pd.DataFrame(rot, columns=[f"r{i}{j}" for i in range(3) for j in range(3)])
        rdf.insert(0, "index", np.arange(len(rot)))
        rdf["rot"], rdf["tilt"], rdf["psi"] = eul[:, 0], eul[:, 1], eul[:, 2]
        meta = {
            "result_format": RESULT_FORMAT,
            "pixel_size": self.pixel_size,
            "score_mean": self.score_mean,
            "score_std": self.score_std,
            "score_count": self.score_count,
            "template_shape": list(self.template_shape),
            "search": self.metadata,
        }
        return write_bundle(
            path,
            maps={
                "scores": np.asarray(self.scores, dtype=np.float32),
                "rotation_index": np.asarray(self.rotation_index, dtype=np.int32),
            },
            metadata=meta,
            voxel_size=self.pixel_size,
            tables={"rotations": rdf, **extra},
            overwrite=overwrite,
        )

    @classmethod
    def read(cls, path: str | os.PathLike) -> MatchResult:
        """Read a bundle written by :meth:`write`; a damaged bundle raises FileFormatError."""
        path = Path(path)
        try:
            return cls._read(path)
        except CorrscanError:
            raise
        except Exception as exc:  # json/CSV/MRC parsers raise many kinds on corrupt input
            raise FileFormatError(
                f"{path} is not a readable match3d result bundle ({type(exc).__name__}: {exc})"
            ) from None

    @classmethod
    def _read(cls, path: Path) -> MatchResult:
        from corrscan.core.io.bundle import read_bundle

        b = read_bundle(path)
        meta = b.metadata.get("metadata")
        if not isinstance(meta, dict) or meta.get("result_format") != RESULT_FORMAT:
            raise FileFormatError(
                f"{path} is not a match3d result bundle (metadata.json has no "
                f"result_format {RESULT_FORMAT!r})"
            )
        missing = ({"scores", "rotation_index"} - set(b.maps)) | ({"rotations"} - set(b.tables))
        if missing:
            raise FileFormatError(f"{path}: the bundle lacks {sorted(missing)}")
        scores = np.array(b.maps["scores"], dtype=np.float32)
        ri = np.array(b.maps["rotation_index"])
        rdf = b.tables["rotations"]
        rot = rdf[[f"r{i}{j}" for i in range(3) for j in range(3)]].to_numpy(dtype=np.float64)
        rot = rot.reshape(-1, 3, 3)
        if ri.shape != scores.shape or scores.ndim != 3:
            raise FileFormatError(f"{path}: score map {scores.shape} and rotation map {ri.shape}")
        if not np.all(np.isfinite(rot)) or (ri.size and np.rint(ri).max() >= len(rot)):
            raise FileFormatError(f"{path}: rotation table does not match the rotation map")
        return cls(
            scores=scores, rotation_index=np.rint(ri).astype(np.int32),
            rotations=rot.astype(np.float32), pixel_size=float(meta["pixel_size"]),
            score_mean=float(meta["score_mean"]), score_std=float(meta["score_std"]),
            score_count=int(meta["score_count"]),
            template_shape=tuple(int(v) for v in meta["template_shape"]),
            metadata=dict(meta.get("search") or {}),
        )  # fmt: skip


# ---------------------------------------------------------------------- tables
TableFormat = Literal["csv", "relion4", "relion5", "dynamo"]

#: Dynamo table columns (1-based numbers in Dynamo's ``dthelp``; Dynamo wiki "Table convention")
DYNAMO_COLUMNS = (
    "tag", "aligned", "averaged", "dx", "dy", "dz", "tdrot", "tilt", "narot", "cc", "cc2",
    "cpu", "ftype", "ymintilt", "ymaxtilt", "xmintilt", "xmaxtilt", "fs1", "fs2", "tomo",
    "reg", "class", "annotation", "x", "y", "z",
)  # fmt: skip
_DYNAMO_WIDTH = 35  # columns written (27-35: zeros)


def _rz(deg: np.ndarray) -> np.ndarray:
    a = np.deg2rad(np.asarray(deg, dtype=np.float64))
    c, s = np.cos(a), np.sin(a)
    out = np.zeros((*a.shape, 3, 3))
    out[..., 0, 0], out[..., 0, 1], out[..., 1, 0], out[..., 1, 1] = c, -s, s, c
    out[..., 2, 2] = 1.0
    return out


def _rx(deg: np.ndarray) -> np.ndarray:
    a = np.deg2rad(np.asarray(deg, dtype=np.float64))
    c, s = np.cos(a), np.sin(a)
    out = np.zeros((*a.shape, 3, 3))
    out[..., 0, 0] = 1.0
    out[..., 1, 1], out[..., 1, 2], out[..., 2, 1], out[..., 2, 2] = c, -s, s, c
    return out


def dynamo_euler_to_matrices(angles: np.ndarray) -> np.ndarray:
    """Dynamo ``(tdrot, tilt, narot)`` (degrees, ``(..., 3)``) -> template rotations ``M``.

    Dynamo's matrix (``dynamo_euler2matrix``) is the extrinsic z-x-z product
    ``D = Rz(narot) Rx(tilt) Rz(tdrot)`` (right-handed ``R``, acting on ``(x, y, z)``); the
    angles describe the rotation that brings the template onto the particle, each step
    turning the particle *clockwise* about its z, new x, new z axes (Dynamo wiki "Euler angles
    convention"). The active rotation taking the template to the particle, corrscan's ``M``
    (``g_M(r) = g(M^T r)``), is therefore ``M = D^T = Rz(-tdrot) Rx(-tilt) Rz(-narot)``; the
    particle's z axis points along ``M e_z = (sin tilt sin tdrot, sin tilt cos tdrot, cos
    tilt)`` (``tdrot`` sets the tilt direction, ``narot`` spins about the new axis). This is the
    same rule as for RELION angles (template-to-particle matrix = transpose of the angles'
    matrix; alisterburt/eulerangles notes), and gives the known correspondence RELION
    ``(rot, tilt, psi) = (narot - 90, tilt, tdrot + 90)``.
    """
    a = np.asarray(angles, dtype=np.float64)
    d = _rz(a[..., 2]) @ _rx(a[..., 1]) @ _rz(a[..., 0])
    return np.swapaxes(d, -1, -2)


def matrices_to_dynamo_euler(matrices: np.ndarray) -> np.ndarray:
    """Inverse of :func:`dynamo_euler_to_matrices`: ``M`` ``(..., 3, 3)`` -> ``(tdrot, tilt,
    narot)`` degrees, ``tilt`` in [0, 180], the others in (-180, 180]. At ``tilt`` 0 or 180 only
    ``tdrot ± narot`` is defined: ``tdrot`` is set to 0.
    """
    d = np.swapaxes(np.asarray(matrices, dtype=np.float64), -1, -2)  # D = Rz(n) Rx(t) Rz(d)
    tilt = np.rad2deg(np.arccos(np.clip(d[..., 2, 2], -1.0, 1.0)))
    sin_t = np.hypot(d[..., 0, 2], d[..., 1, 2])
    regular = sin_t > 1e-9
    tdrot = np.where(regular, np.rad2deg(np.arctan2(d[..., 2, 0], d[..., 2, 1])), 0.0)
    narot = np.where(
        regular,
        np.rad2deg(np.arctan2(d[..., 0, 2], -d[..., 1, 2])),
        np.rad2deg(np.arctan2(d[..., 1, 0], d[..., 0, 0])),  # D = Rz(narot) Rx(0 or 180)
    )
    out = np.stack([tdrot, tilt, narot], axis=-1)
    out = np.where(out <= -180.0, out + 360.0, out)
    return out


def _table_matrices(df: pd.DataFrame) -> np.ndarray:
    """``(n, 3, 3)`` template rotations from ``r00..r22`` or else RELION ``rot, tilt, psi``."""
    cols = [f"r{i}{j}" for i in range(3) for j in range(3)]
    if all(c in df for c in cols):
        return df[cols].to_numpy(dtype=np.float64).reshape(-1, 3, 3)
    if all(c in df for c in ("rot", "tilt", "psi")):
        return relion_euler_to_matrices(df[["rot", "tilt", "psi"]].to_numpy(dtype=np.float64))
    raise InputError("the table needs rotation columns r00..r22 or RELION angles rot, tilt, psi")


def _write_dynamo(df: pd.DataFrame, path: Path, *, tomo_number: int) -> None:
    n = len(df)
    mats = _table_matrices(df) if n else np.zeros((0, 3, 3))
    eul = matrices_to_dynamo_euler(mats) if n else np.zeros((0, 3))
    t = np.zeros((n, _DYNAMO_WIDTH))
    col = {name: i for i, name in enumerate(DYNAMO_COLUMNS)}
    t[:, col["tag"]] = np.arange(1, n + 1)
    t[:, col["aligned"]] = 1
    t[:, col["averaged"]] = 1
    t[:, col["tdrot"] : col["narot"] + 1] = eul
    if "score" in df:
        t[:, col["cc"]] = df["score"].to_numpy(dtype=np.float64)
    t[:, col["tomo"]] = tomo_number
    t[:, col["class"]] = 1
    for axis in "xyz":  # Dynamo counts voxels from 1 (wiki "Volume center")
        t[:, col[axis]] = df[axis].to_numpy(dtype=np.float64) + 1.0
    if not np.all(np.isfinite(t)):
        raise InputError("the table has non-finite positions, angles or scores")
    ints = {col[c] for c in ("tag", "aligned", "averaged", "tomo", "class")}
    lines = [
        " ".join(f"{int(v)}" if j in ints else f"{v:.6f}" for j, v in enumerate(row)) for row in t
    ]
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def write_table(
    df: pd.DataFrame,
    path: str | os.PathLike,
    *,
    fmt: TableFormat = "csv",
    tomo_name: str = "tomogram",
    pixel_size: float | None = None,
    shape: tuple[int, int, int] | None = None,
    tomo_number: int = 1,
) -> Path:
    """Write an orientations table as CSV, RELION 4 / 5 STAR or a Dynamo ``.tbl``.

    ``fmt="dynamo"``: one particle per line, whitespace-separated, 35 columns in Dynamo's
    order (``DYNAMO_COLUMNS``; Dynamo wiki "Table convention"): ``tag`` 1..n, ``aligned`` =
    ``averaged`` = 1, shifts ``dx, dy, dz`` = 0, Euler angles ``tdrot, tilt, narot`` (columns
    7-9, :func:`matrices_to_dynamo_euler` of the table's matrices ``r00..r22``, else of its
    RELION angles), ``cc`` = ``score`` (column 10), ``tomo`` = ``tomo_number`` (column 20),
    ``class`` = 1, positions ``x, y, z`` in columns 24-26 **1-based** (Dynamo counts voxels
    from 1: ``x_dynamo = x + 1``); every other column 0.
    """
    path = Path(path)
    ps = float(pixel_size if pixel_size is not None else df.attrs.get("pixel_size", 1.0))
    if fmt == "csv":
        df.to_csv(path, index=False)
        return path
    if fmt == "dynamo":
        _write_dynamo(df, path, tomo_number=tomo_number)
        return path
    import starfile

    out = pd.DataFrame({"rlnTomoName": [tomo_name] * len(df)})
    if fmt == "relion4":
        out["rlnCoordinateX"] = df["x"].to_numpy(dtype=np.float64)
        out["rlnCoordinateY"] = df["y"].to_numpy(dtype=np.float64)
        out["rlnCoordinateZ"] = df["z"].to_numpy(dtype=np.float64)
        out["rlnDetectorPixelSize"] = ps
    elif fmt == "relion5":
        shp = shape if shape is not None else df.attrs.get("shape")
        if shp is None:
            raise InputError("RELION 5 coordinates need the tomogram shape (shape=(D, H, W))")
        d, h, w = (float(v) for v in shp)
        out["rlnCenteredCoordinateXAngst"] = (df["x"].to_numpy(float) - w / 2.0) * ps
        out["rlnCenteredCoordinateYAngst"] = (df["y"].to_numpy(float) - h / 2.0) * ps
        out["rlnCenteredCoordinateZAngst"] = (df["z"].to_numpy(float) - d / 2.0) * ps
    else:
        raise InputError(f"unknown table format {fmt!r}: use csv, relion4, relion5 or dynamo")
    out["rlnAngleRot"] = df["rot"].to_numpy(float)
    out["rlnAngleTilt"] = df["tilt"].to_numpy(float)
    out["rlnAnglePsi"] = df["psi"].to_numpy(float)
    out["rlnAutopickFigureOfMerit"] = df["score"].to_numpy(float)
    starfile.write({"particles": out}, path, overwrite=True)
    return path


def read_table(
    path: str | os.PathLike,
    *,
    pixel_size: float | None = None,
    shape: tuple[int, int, int] | None = None,
) -> pd.DataFrame:
    """Read a CSV, RELION 4/5 STAR or Dynamo ``.tbl`` table back into ``z, y, x`` + matrices.

    The format follows the suffix (``.csv``, ``.tbl``, else STAR). A Dynamo table gives
    ``z, y, x`` = column 26/25/24 + shift ``dz/dy/dx`` - 1 (0-based voxels), the matrices
    ``r00..r22`` of ``tdrot, tilt, narot`` (:func:`dynamo_euler_to_matrices`), the equivalent
    RELION ``rot, tilt, psi``, ``score`` = ``cc`` and the Dynamo ``tag``, ``tomo``, ``class``
    and angles (``tdrot``, ``dynamo_tilt``, ``narot``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"table not found: {path}")
    try:
        return _read_table(path, pixel_size=pixel_size, shape=shape)
    except CorrscanError:
        raise
    except Exception as exc:  # pandas/starfile raise many kinds on corrupt input
        raise FileFormatError(
            f"{path} is not a readable orientations table ({type(exc).__name__}: {exc})"
        ) from None


def _read_dynamo(path: Path) -> pd.DataFrame:
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < len(DYNAMO_COLUMNS):
            raise FileFormatError(
                f"{path} line {i}: {len(parts)} columns, a Dynamo table needs at least "
                f"{len(DYNAMO_COLUMNS)} (x, y, z in columns 24-26)"
            )
        try:
            rows.append([float(v) for v in parts[: len(DYNAMO_COLUMNS)]])
        except ValueError:
            raise FileFormatError(f"{path} line {i}: non-numeric value in a Dynamo table") from None
    t = np.asarray(rows, dtype=np.float64).reshape(-1, len(DYNAMO_COLUMNS))
    if not np.all(np.isfinite(t)):
        raise FileFormatError(f"{path}: non-finite values in a Dynamo table")
    c = {name: t[:, i] for i, name in enumerate(DYNAMO_COLUMNS)}
    eul = np.stack([c["tdrot"], c["tilt"], c["narot"]], axis=-1)
    mats = dynamo_euler_to_matrices(eul)
    rel = matrices_to_relion_euler(mats) if len(t) else np.zeros((0, 3))
    out = pd.DataFrame({
        "z": c["z"] + c["dz"] - 1.0, "y": c["y"] + c["dy"] - 1.0, "x": c["x"] + c["dx"] - 1.0,
        "rot": rel[:, 0], "tilt": rel[:, 1], "psi": rel[:, 2], "score": c["cc"],
        "tag": c["tag"].astype(np.int64), "tomo": c["tomo"].astype(np.int64),
        "class": c["class"].astype(np.int64),
        "tdrot": c["tdrot"], "dynamo_tilt": c["tilt"], "narot": c["narot"],
    })  # fmt: skip
    for i in range(3):
        for j in range(3):
            out[f"r{i}{j}"] = mats[:, i, j]
    return out


def _read_table(
    path: Path, *, pixel_size: float | None, shape: tuple[int, int, int] | None
) -> pd.DataFrame:
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    if path.suffix.lower() == ".tbl":
        return _read_dynamo(path)
    import starfile

    data = starfile.read(path, always_dict=True)
    df = next(iter(data.values()))
    ps = pixel_size or float(df.get("rlnDetectorPixelSize", pd.Series([1.0])).iloc[0])
    if "rlnCoordinateX" in df:
        x, y, z = (df[f"rlnCoordinate{a}"].to_numpy(float) for a in "XYZ")
    elif "rlnCenteredCoordinateXAngst" in df:
        if shape is None:
            raise InputError("RELION 5 tables need shape=(D, H, W) and pixel_size to read back")
        d, h, w = shape
        x = df["rlnCenteredCoordinateXAngst"].to_numpy(float) / ps + w / 2.0
        y = df["rlnCenteredCoordinateYAngst"].to_numpy(float) / ps + h / 2.0
        z = df["rlnCenteredCoordinateZAngst"].to_numpy(float) / ps + d / 2.0
    else:
        raise FileFormatError(f"{path}: no RELION coordinate columns")
    eul = df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)
    mats = relion_euler_to_matrices(eul)
    out = pd.DataFrame(
        {"z": z, "y": y, "x": x, "rot": eul[:, 0], "tilt": eul[:, 1], "psi": eul[:, 2]}
    )
    if "rlnAutopickFigureOfMerit" in df:
        out["score"] = df["rlnAutopickFigureOfMerit"].to_numpy(float)
    for i in range(3):
        for j in range(3):
            out[f"r{i}{j}"] = mats[:, i, j]
    return out
