"""Batch runs: many micrographs or tomograms, skip the finished ones, one summary table."""

from __future__ import annotations

import glob
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from corrscan.core.io.star import read_star
from corrscan.core.progress import track
from corrscan.errors import CorrscanError, FileFormatError, InputError

__all__ = ["bundle_is_complete", "list_inputs", "output_path_for", "run_batch"]

# STAR/CSV columns that name an input file, in order of preference.
_PATH_COLUMNS = (
    "path",
    "file",
    "filename",
    "rlnMicrographName",
    "rlnTomoName",
    "rlnTomoReconstructedTomogram",
    "rlnImageName",
    "micrograph",
    "tomogram",
)


def _from_table(df: pd.DataFrame, source: Path) -> list[Path]:
    for col in _PATH_COLUMNS:
        if col in df.columns:
            values = df.loc[:, [col]].iloc[:, 0]  # one Series even if the name repeats
            bad = [i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()]
            if bad:
                raise FileFormatError(
                    f"{source}: column {col!r} has {len(bad)} empty or non-text entr"
                    f"{'y' if len(bad) == 1 else 'ies'} (first at row {bad[0] + 1})"
                )
            paths = [Path(v.strip()) for v in values]
            return [p if p.is_absolute() else source.parent / p for p in paths]
    raise InputError(
        f"{source}: no column naming the input files; use one of {', '.join(_PATH_COLUMNS)}"
    )


def list_inputs(spec: str | Path | list[str | Path]) -> list[Path]:
    """Input files from a glob pattern, a CSV/STAR list, or an explicit list.

    Relative paths inside a CSV or STAR file are taken relative to that file's folder. Missing
    files raise :class:`FileFormatError` naming all of them; duplicates are removed (first kept).
    """
    if isinstance(spec, (list, tuple)):
        paths = [Path(p) for p in spec]
    else:
        s = str(spec)
        p = Path(s)
        if p.suffix.lower() == ".csv" and p.is_file():
            try:
                paths = _from_table(pd.read_csv(p, dtype=str), p)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
                raise FileFormatError(f"{p} is not a readable CSV list: {exc}") from None
        elif p.suffix.lower() == ".star" and p.is_file():
            tables = read_star(p)
            df = next(iter(tables.values())) if len(tables) == 1 else None
            for name in ("micrographs", "global", "particles"):
                if df is None and name in tables:
                    df = tables[name]
            if df is None:
                df = next(iter(tables.values()))
            paths = _from_table(df, p)
        else:
            paths = sorted(Path(m) for m in glob.glob(s, recursive=True))
            if not paths:
                raise InputError(f"no input files match {s!r}")
    missing = [str(q) for q in paths if not q.exists()]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise FileFormatError(f"{len(missing)} input file(s) not found: {shown}")
    seen: dict[Path, None] = {}
    for q in paths:
        seen.setdefault(q, None)
    if not seen:
        raise InputError(f"the input list {spec!s} is empty")
    return list(seen)


def output_path_for(input_path: Path, out_dir: Path, suffix: str = "") -> Path:
    """Result bundle path of one input: ``out_dir / <input stem><suffix>``."""
    name = input_path.name
    for ext in (".ome.zarr", ".zarr", ".mrcs", ".mrc", ".map", ".rec", ".tiff", ".tif", ".npy"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return Path(out_dir) / f"{name}{suffix}"


def bundle_is_complete(path: Path) -> bool:
    """A finished bundle: the final folder exists and holds ``metadata.json``."""
    return Path(path).is_dir() and (Path(path) / "metadata.json").is_file()


def run_batch(
    inputs: list[Path],
    run_one: Callable[[Path, Path], dict[str, Any]],
    out_dir: str | Path,
    *,
    skip_done: bool = True,
    stop_on_error: bool = False,
    suffix: str = "",
) -> pd.DataFrame:
    """Run ``run_one(input, output)`` for every input; return one summary row per input.

    Parameters
    ----------
    inputs
        Input files (see :func:`list_inputs`).
    run_one
        Processes one input and writes its bundle to ``output``; returns summary fields
        (e.g. number of picks). It must write atomically (result bundles do).
    out_dir
        Folder of the per-input bundles; ``summary.csv`` is written there too.
    skip_done
        Skip inputs whose bundle is already complete (status ``skipped``).
    stop_on_error
        Re-raise the first error instead of recording it (status ``failed`` with the message).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in track(inputs, description="inputs", unit="input"):
        dest = output_path_for(path, out, suffix)
        row: dict[str, Any] = {"input": str(path), "output": str(dest)}
        if skip_done and bundle_is_complete(dest):
            row["status"] = "skipped"
            rows.append(row)
            continue
        t0 = time.perf_counter()
        try:
            row.update(run_one(path, dest) or {})
            row["status"] = "done"
        except CorrscanError as exc:
            if stop_on_error:
                raise
            row.update(status="failed", error=str(exc))
        except Exception as exc:  # recorded, never silent
            if stop_on_error:
                raise
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            row["traceback"] = traceback.format_exc(limit=3)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary.to_csv(out / "summary.csv", index=False)
    return summary
