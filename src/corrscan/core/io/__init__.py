"""File formats: MRC, TIFF, OME-Zarr, STAR, result bundles.

Every reader raises :class:`corrscan.errors.FileFormatError` naming the file and the problem
for missing, truncated or corrupt files (never a raw library traceback).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from corrscan.core.io.bundle import Bundle, read_bundle, write_bundle
from corrscan.core.io.mrc import MrcHeader, read_mrc, read_mrc_header, write_mrc
from corrscan.core.io.star import from_relion, read_star, relion_particles, write_star
from corrscan.core.io.tiff import iter_tiff_frames, read_tiff, write_tiff
from corrscan.core.io.zarr_io import read_ome_zarr, write_ome_zarr
from corrscan.errors import FileFormatError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Bundle",
    "MrcHeader",
    "from_relion",
    "iter_tiff_frames",
    "read_bundle",
    "read_image",
    "read_mrc",
    "read_mrc_header",
    "read_ome_zarr",
    "read_star",
    "read_tiff",
    "relion_particles",
    "write_bundle",
    "write_mrc",
    "write_ome_zarr",
    "write_star",
    "write_tiff",
]

_MRC = (".mrc", ".mrcs", ".map", ".rec", ".st", ".ali", ".ccp4")
_TIFF = (".tif", ".tiff")
IMAGE_EXTENSIONS = (*_MRC, *_TIFF, ".zarr", ".npy")


def read_image(
    path: str | os.PathLike, *, mmap: bool = False, level: int = 0
) -> tuple[Any, float | None]:
    """Read an image, volume or stack, choosing the reader by extension.

    ``.mrc .mrcs .map .rec .st .ali .ccp4`` -> :func:`read_mrc`; ``.tif .tiff`` ->
    :func:`read_tiff`; ``.zarr`` -> :func:`read_ome_zarr` (lazy dask array, ``level``);
    ``.npy`` -> :func:`numpy.load`.

    Returns
    -------
    data, voxel_size
        The array (NumPy; dask for OME-Zarr; memory map with ``mmap=True`` for MRC/NPY) and
        the voxel size in Å along the last (x) axis, or ``None`` when the format does not
        record one (TIFF, NPY).
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext in _MRC:
        return read_mrc(p, mmap=mmap)
    if ext in _TIFF:
        return read_tiff(p), None
    if ext == ".zarr" or ((p.is_dir() and (p / ".zattrs").exists()) or (p / "zarr.json").exists()):
        data, vs = read_ome_zarr(p, level=level)
        return data, (float(vs[-1]) if vs else None)
    if ext == ".npy":
        if not p.is_file():
            raise FileFormatError(f"NPY file not found: {p}")
        try:
            return np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False), None
        except (ValueError, OSError, EOFError) as exc:
            raise FileFormatError(f"{p} is not a readable .npy file: {exc}") from None
    raise FileFormatError(
        f"{p}: unknown image format {ext!r}; use one of {', '.join(IMAGE_EXTENSIONS)}"
    )
