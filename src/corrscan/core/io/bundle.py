"""Result bundles: a folder of named maps, tables and ``metadata.json``, written atomically.

Layout of ``<path>/``::

    metadata.json        config, versions, timings, voxel size, list of maps and tables
    <map>.mrc            one per map (voxel size in the header), or <map>.npy for integer
                         maps that no MRC mode holds without loss (e.g. int64 search indices)
    <table>.csv          one per table (and <table>.star when asked)

The bundle is written to a sibling ``<path>.partial-<pid>`` folder and renamed onto
``<path>`` only when complete, so an interrupted run never leaves a folder that looks
finished; ``metadata.json`` (written last) carries ``"complete": true``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from corrscan.core.arrays import as_numpy
from corrscan.core.io.mrc import _mrc_compatible, read_mrc, write_mrc
from corrscan.errors import FileFormatError, InputError, ResultExistsError

__all__ = ["BUNDLE_FORMAT", "Bundle", "read_bundle", "write_bundle"]

BUNDLE_FORMAT = "corrscan-bundle"
BUNDLE_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass
class Bundle:
    """A result bundle read back from disk.

    Attributes
    ----------
    path
        Bundle folder.
    maps
        ``{name: array}``; read-only memory maps (lazy) in the stored dtype.
    metadata
        Parsed ``metadata.json`` (the user metadata under ``"metadata"``).
    tables
        ``{name: DataFrame}`` from the CSV files.
    voxel_size
        Voxel size in Å as written.
    """

    path: Path
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    voxel_size: Any = None


def _jsonable(obj: Any) -> Any:
    """``json.dumps`` default: NumPy/torch scalars and small arrays, paths, models, ..."""
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    try:
        a = as_numpy(obj)
    except Exception:
        return repr(obj)
    if a.size > 10_000:
        raise InputError(f"metadata value of shape {a.shape} is too large for metadata.json")
    return a.tolist()


def _sanitize_floats(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _sanitize_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize_floats(v) for v in obj]
    return obj


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("corrscan", "numpy", "torch", "scipy", "pandas", "mrcfile"):
        with contextlib.suppress(Exception):
            out[mod] = str(__import__(mod).__version__)
    return out


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name) or name in ("metadata",):
        raise InputError(f"{what} name {name!r} must be [A-Za-z0-9_.-] (and not 'metadata')")


def write_bundle(
    path: str | os.PathLike,
    *,
    maps: Mapping[str, Any],
    metadata: Mapping[str, Any],
    voxel_size: float | tuple[float, ...],
    tables: Mapping[str, pd.DataFrame] | None = None,
    overwrite: bool = False,
    star: bool | Mapping[str, pd.DataFrame] = False,
) -> Path:
    """Write a result bundle atomically.

    Parameters
    ----------
    path
        Bundle folder to create.
    maps
        ``{name: (H, W) or (D, H, W) array}`` (NumPy/CuPy/torch). Floats are stored as float32
        MRC; integer maps as int16/uint16 MRC when they fit, else as ``.npy`` (lossless).
    metadata
        JSON-serialisable mapping (config, search-space size, timings, ...); NumPy/torch
        scalars, small arrays, paths and pydantic models are converted.
    voxel_size
        Å per pixel/voxel (number or `(z, y, x)`), written to every MRC header and the metadata.
    tables
        ``{name: DataFrame}`` written as ``<name>.csv``.
    overwrite
        Replace an existing bundle; otherwise :class:`ResultExistsError`.
    star
        True: also write every table as ``<name>.star`` (as is); or a mapping
        ``{name: DataFrame}`` of STAR-ready tables (e.g. from
        :func:`corrscan.core.io.star.relion_particles`).

    Returns
    -------
    Path
        The finished bundle folder.
    """
    from corrscan.core.io.star import write_star

    dest = Path(path)
    tables = dict(tables or {})
    if dest.exists() and not overwrite:
        raise ResultExistsError(
            f"result bundle already exists: {dest} (pass overwrite=True to replace it)"
        )
    if not dest.parent.exists():
        raise FileFormatError(f"cannot write bundle {dest}: {dest.parent} does not exist")
    for n in maps:
        _check_name(n, "map")
    for n in tables:
        _check_name(n, "table")
    star_tables: dict[str, pd.DataFrame] = {}
    if star is True:
        star_tables = dict(tables)
    elif isinstance(star, Mapping):
        star_tables = dict(star)
    for n in star_tables:
        _check_name(n, "STAR table")

    tmp = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    old: Path | None = None
    try:
        map_info: dict[str, Any] = {}
        for name, data in maps.items():
            a = np.ascontiguousarray(as_numpy(data))
            info: dict[str, Any] = {"shape": list(a.shape), "dtype": str(a.dtype)}
            try:
                stored = _mrc_compatible(a, f"map {name!r}")
                lossless_int = a.dtype.kind not in "iub" or stored.dtype.kind in "iu"
            except InputError:
                lossless_int = False
            if a.ndim in (2, 3) and lossless_int:
                write_mrc(tmp / f"{name}.mrc", a, voxel_size, overwrite=False)
                info["file"] = f"{name}.mrc"
            else:
                np.save(tmp / f"{name}.npy", a)
                info["file"] = f"{name}.npy"
            map_info[name] = info
        table_info: dict[str, Any] = {}
        for name, df in tables.items():
            if not isinstance(df, pd.DataFrame):
                raise InputError(f"table {name!r} must be a DataFrame, got {type(df).__name__}")
            df.to_csv(tmp / f"{name}.csv", index=False)
            table_info[name] = {"file": f"{name}.csv", "rows": len(df), "columns": list(df.columns)}
        for name, df in star_tables.items():
            write_star(tmp / f"{name}.star", df)
            table_info.setdefault(name, {})["star"] = f"{name}.star"
        vs = voxel_size if np.ndim(voxel_size) == 0 else list(np.asarray(voxel_size, float))
        doc = {
            "format": BUNDLE_FORMAT,
            "bundle_version": BUNDLE_VERSION,
            "complete": True,
            "written_at": _dt.datetime.now(_dt.UTC).isoformat(),
            "versions": _versions(),
            "voxel_size": vs,
            "maps": map_info,
            "tables": table_info,
            "metadata": dict(metadata),
        }
        text = json.dumps(
            _sanitize_floats(json.loads(json.dumps(doc, default=_jsonable))),
            indent=2,
            allow_nan=False,
        )
        (tmp / "metadata.json").write_text(text)
        if dest.exists():
            if not overwrite:
                raise ResultExistsError(f"result bundle appeared meanwhile: {dest}")
            old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dest.exists():
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def read_bundle(path: str | os.PathLike) -> Bundle:
    """Open a finished bundle: maps as read-only memory maps, tables as DataFrames.

    Raises
    ------
    FileFormatError
        Not a folder, no/invalid ``metadata.json`` (an unfinished or foreign folder), or a
        listed file missing or unreadable.
    """
    p = Path(path)
    if not p.is_dir():
        raise FileFormatError(f"result bundle not found (no folder): {p}")
    meta_path = p / "metadata.json"
    if not meta_path.is_file():
        raise FileFormatError(f"{p} is not a finished corrscan bundle: metadata.json is missing")
    try:
        doc = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT or not doc.get("complete"):
        raise FileFormatError(f"{p} is not a finished corrscan bundle (bad metadata.json)")
    out = Bundle(path=p, metadata=doc, voxel_size=doc.get("voxel_size"))
    for name, info in dict(doc.get("maps", {})).items():
        f = p / str(info.get("file", ""))
        if not f.is_file():
            raise FileFormatError(f"bundle {p}: map file {f.name} is missing")
        if f.suffix == ".npy":
            try:
                out.maps[name] = np.load(f, mmap_mode="r")
            except (ValueError, OSError) as exc:
                raise FileFormatError(f"bundle {p}: cannot read {f.name}: {exc}") from None
        else:
            out.maps[name] = read_mrc(f, mmap=True)[0]
    for name, info in dict(doc.get("tables", {})).items():
        if "file" not in info:
            continue
        f = p / str(info["file"])
        if not f.is_file():
            raise FileFormatError(f"bundle {p}: table file {f.name} is missing")
        try:
            out.tables[name] = pd.read_csv(f)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise FileFormatError(f"bundle {p}: cannot read {f.name}: {exc}") from None
    return out
