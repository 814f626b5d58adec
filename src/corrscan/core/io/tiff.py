"""TIFF images and stacks (tifffile).

Stacks are `(N, H, W)` (pages or an ImageJ/OME series); single images `(H, W)`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from corrscan.core.arrays import as_numpy
from corrscan.core.io._util import atomic_path, require_file
from corrscan.errors import FileFormatError, InputError

__all__ = ["iter_tiff_frames", "read_tiff", "tiff_shape", "write_tiff"]


class _Errors(logging.Handler):
    """Collects tifffile's logged errors (it logs, rather than raises, on damaged page chains)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _strict(p: Path) -> Iterator[None]:
    """Turn errors that tifffile only logs into :class:`FileFormatError`."""
    log = logging.getLogger("tifffile")
    handler = _Errors()
    old_propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = old_propagate
    if handler.messages:
        raise FileFormatError(f"{p} is damaged or truncated: {handler.messages[0]}")


def _open(p: Path):
    import tifffile

    try:
        return tifffile.TiffFile(p)
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error, ...
        raise FileFormatError(f"{p} is not a readable TIFF file: {exc}") from None


def read_tiff(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF image `(H, W)` or stack `(N, H, W)` (first series) into memory.

    Raises
    ------
    FileFormatError
        Missing, corrupt or truncated files.
    """
    p = require_file(path, "TIFF")
    with _strict(p), _open(p) as tif:
        try:
            if not tif.series:
                raise FileFormatError(f"{p} contains no images")
            data = tif.series[0].asarray()
        except FileFormatError:
            raise
        except Exception as exc:
            raise FileFormatError(f"{p}: cannot read image data (truncated?): {exc}") from None
    return np.asarray(data)


def tiff_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Shape of the first series without reading the pixels."""
    p = require_file(path, "TIFF")
    with _strict(p), _open(p) as tif:
        if not tif.series:
            raise FileFormatError(f"{p} contains no images")
        return tuple(int(s) for s in tif.series[0].shape)


def iter_tiff_frames(path: str | os.PathLike, chunk: int = 64) -> Iterator[tuple[int, np.ndarray]]:
    """Iterate over a TIFF stack in chunks of frames.

    Parameters
    ----------
    path
        TIFF stack (or a single image, yielded as one frame).
    chunk
        Frames per chunk (>= 1).

    Yields
    ------
    start, frames
        Index of the first frame and a `(n, H, W)` array (``n <= chunk``).
    """
    if int(chunk) < 1:
        raise InputError(f"chunk must be >= 1, got {chunk}")
    chunk = int(chunk)
    p = require_file(path, "TIFF")
    with _strict(p), _open(p) as tif:
        if not tif.series:
            raise FileFormatError(f"{p} contains no images")
        series = tif.series[0]
        shape = tuple(series.shape)
        n_pages = len(series.pages) if hasattr(series, "pages") else 0
        try:
            if len(shape) == 2:
                yield 0, np.asarray(series.asarray())[None]
                return
            n = shape[0]
            if n_pages == n:
                for start in range(0, n, chunk):
                    stop = min(n, start + chunk)
                    frames = tif.asarray(key=range(start, stop), series=0)
                    yield start, np.asarray(frames).reshape(stop - start, *shape[-2:])
            else:  # frames not one per page (e.g. contiguous ImageJ data): memory map or read
                try:
                    data = tif.asarray(series=0, out="memmap")
                except Exception:
                    data = series.asarray()
                data = np.asarray(data).reshape(-1, *shape[-2:])
                for start in range(0, data.shape[0], chunk):
                    yield start, np.array(data[start : start + chunk])
        except FileFormatError:
            raise
        except Exception as exc:
            raise FileFormatError(f"{p}: cannot read frames (truncated?): {exc}") from None


def write_tiff(
    path: str | os.PathLike, data: Any, *, overwrite: bool = True, imagej: bool = False
) -> Path:
    """Write `(H, W)` or `(N, H, W)` data as a (multi-page) TIFF, atomically.

    Parameters
    ----------
    path
        Destination.
    data
        NumPy/CuPy/torch array.
    overwrite
        Replace an existing file (default).
    imagej
        Write ImageJ hyperstack metadata.
    """
    import tifffile

    a = np.ascontiguousarray(as_numpy(data))
    if a.ndim not in (2, 3):
        raise InputError(f"TIFF data must be (H, W) or (N, H, W), got {a.shape} for {path}")
    dest = Path(path)
    with atomic_path(dest, overwrite=overwrite, what="TIFF file") as tmp:
        try:
            tifffile.imwrite(tmp, a, imagej=imagej, photometric="minisblack")
        except OSError as exc:
            raise FileFormatError(f"cannot write TIFF file {dest}: {exc}") from None
    return dest
