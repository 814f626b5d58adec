"""MRC / CCP4 maps and image stacks (mrcfile), with the voxel size kept.

Arrays are in NumPy order: `(H, W)` images, `(D, H, W)` volumes or `(N, H, W)` stacks
(``.mrcs``). Voxel sizes are in Å (the MRC header's ``cella / mxyz``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile
import mrcfile.utils
import numpy as np

from corrscan.core.arrays import as_numpy
from corrscan.core.io._util import atomic_path, require_file
from corrscan.errors import FileFormatError, InputError

__all__ = ["MrcHeader", "read_mrc", "read_mrc_header", "write_mrc"]

_HEADER_BYTES = 1024


@dataclass(frozen=True)
class MrcHeader:
    """What an MRC header says about its data.

    Attributes
    ----------
    shape
        Data shape in NumPy order (`(H, W)`, `(D, H, W)` or `(N, H, W)`).
    dtype
        Data type of the stored values (byte order as in the file).
    voxel_size
        `(z, y, x)` voxel size in Å (0 where the header has none).
    origin
        `(z, y, x)` header origin in Å.
    is_stack
        True for an image stack (space group 0 with more than one section).
    data_offset
        Byte offset of the data block (1024 + extended header).
    mode
        MRC mode number.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    voxel_size: tuple[float, float, float]
    origin: tuple[float, float, float]
    is_stack: bool
    data_offset: int
    mode: int


def _read_header(p: Path) -> MrcHeader:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(p, mode="r", permissive=False, header_only=True) as m:
                h = m.header
                vs = m.voxel_size
                dtype = mrcfile.utils.data_dtype_from_header(h)
                shape = tuple(int(s) for s in mrcfile.utils.data_shape_from_header(h))
                ext = int(h.nsymbt)
                is_stack = int(h.ispg) == mrcfile.utils.IMAGE_STACK_SPACEGROUP and int(h.nz) > 1
                origin = (float(h.origin.z), float(h.origin.y), float(h.origin.x))
                mode = int(h.mode)
    except FileFormatError:
        raise
    except Exception as exc:  # mrcfile raises ValueError/OSError/... for bad headers
        raise FileFormatError(f"{p} is not a readable MRC file: {exc}") from None
    if any(n <= 0 for n in shape) or ext < 0:
        raise FileFormatError(
            f"{p} has a corrupt MRC header: dimensions {shape}, extended header {ext} bytes "
            "(all must be positive)"
        )
    return MrcHeader(
        shape=shape,
        dtype=np.dtype(dtype),
        voxel_size=(float(vs.z), float(vs.y), float(vs.x)),
        origin=origin,
        is_stack=is_stack,
        data_offset=_HEADER_BYTES + ext,
        mode=mode,
    )


def read_mrc_header(path: str | os.PathLike) -> MrcHeader:
    """Read only the header of an MRC file (see :class:`MrcHeader`)."""
    return _read_header(require_file(path, "MRC"))


def read_mrc(path: str | os.PathLike, *, mmap: bool = False) -> tuple[np.ndarray, float]:
    """Read an MRC map, image or stack.

    Parameters
    ----------
    path
        ``.mrc``, ``.mrcs``, ``.map``, ``.rec``, ... file.
    mmap
        Return a read-only memory map instead of loading the data (for large maps).

    Returns
    -------
    data, voxel_size
        The array in NumPy order (native byte order when loaded; the file's byte order when
        memory-mapped) and the voxel size in Å along x (see :func:`read_mrc_header` for all
        three axes).

    Raises
    ------
    FileFormatError
        Missing file, bad header, or a data block shorter than the header says (truncated).
    """
    p = require_file(path, "MRC")
    h = _read_header(p)
    nbytes = int(np.prod(h.shape, dtype=np.int64)) * h.dtype.itemsize
    size = p.stat().st_size
    if size < h.data_offset + nbytes:
        raise FileFormatError(
            f"{p} is truncated: header says {h.shape} {h.dtype} ({nbytes} bytes after "
            f"{h.data_offset}), file has {size} bytes"
        )
    try:
        data = np.memmap(p, dtype=h.dtype, mode="r", offset=h.data_offset, shape=h.shape)
    except (OSError, ValueError, OverflowError) as exc:
        raise FileFormatError(f"cannot map the data of {p}: {exc}") from None
    if not mmap:
        native = h.dtype.newbyteorder("=")
        data = np.array(data, dtype=native)
    return data, h.voxel_size[2]


def _mrc_compatible(a: np.ndarray, name: str) -> np.ndarray:
    """Cast to a dtype MRC can hold without loss (float64 -> float32 is the one lossy step)."""
    dt = a.dtype
    if dt in (np.float32, np.float16, np.int8, np.int16, np.uint16, np.complex64):
        return a
    if dt == np.float64:
        return a.astype(np.float32)
    if dt == np.complex128:
        return a.astype(np.complex64)
    if dt == np.bool_ or dt == np.uint8:
        return a.astype(np.int16)
    if dt.kind in "iu":
        if a.size == 0:
            return a.astype(np.int16)
        lo, hi = int(a.min()), int(a.max())
        if lo >= -(2**15) and hi < 2**15:
            return a.astype(np.int16)
        if lo >= 0 and hi < 2**16:
            return a.astype(np.uint16)
        if max(abs(lo), abs(hi)) <= 2**24:
            return a.astype(np.float32)
        raise InputError(
            f"{name}: integer values up to {max(abs(lo), abs(hi))} do not fit any MRC mode "
            "without loss; store them as .npy"
        )
    raise InputError(f"{name}: dtype {dt} cannot be written to MRC")


def _voxel_xyz(voxel_size: Any) -> tuple[float, float, float]:
    if np.ndim(voxel_size) == 0:
        v = float(voxel_size)
        vz = vy = vx = v
    else:
        vals = [float(v) for v in np.asarray(voxel_size, dtype=np.float64).reshape(-1)]
        if len(vals) == 2:
            vals = [vals[0], *vals]
        if len(vals) != 3:
            raise InputError(f"voxel_size must be a number or (z, y, x), got {voxel_size!r}")
        vz, vy, vx = vals
    for v in (vz, vy, vx):
        if not (np.isfinite(v) and v >= 0):
            raise InputError(f"voxel_size must be finite and >= 0 Å, got {voxel_size!r}")
    return vx, vy, vz


def write_mrc(
    path: str | os.PathLike,
    data: Any,
    voxel_size: float | tuple[float, ...],
    *,
    overwrite: bool = True,
    origin: tuple[float, float, float] | None = None,
) -> Path:
    """Write an MRC file atomically (temporary sibling, then rename).

    Parameters
    ----------
    path
        Destination. A ``.mrcs`` name with 3-D data writes an image stack.
    data
        `(H, W)` or `(D, H, W)` array (NumPy/CuPy/torch). float64 is stored as float32,
        bool/uint8 as int16, larger integers as int16/uint16 when they fit (else float32 when
        exact, else :class:`InputError`).
    voxel_size
        Å per voxel: a number, or `(z, y, x)`.
    overwrite
        Replace an existing file (default); False raises
        :class:`~corrscan.errors.ResultExistsError`.
    origin
        Optional `(z, y, x)` header origin in Å.

    Returns
    -------
    Path
        The written file.
    """
    a = np.ascontiguousarray(as_numpy(data))
    if a.ndim not in (2, 3):
        raise InputError(f"MRC data must be 2-D or 3-D, got shape {a.shape} for {path}")
    a = _mrc_compatible(a, str(path))
    vx, vy, vz = _voxel_xyz(voxel_size)
    dest = Path(path)
    with atomic_path(dest, overwrite=overwrite, what="MRC file") as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with mrcfile.new(tmp, overwrite=True) as m:
                    m.set_data(a)
                    if a.ndim == 3 and dest.suffix.lower() == ".mrcs":
                        m.set_image_stack()
                    m.voxel_size = (vx, vy, vz)
                    if origin is not None:
                        oz, oy, ox = (float(o) for o in origin)
                        m.header.origin = (ox, oy, oz)
        except OSError as exc:
            raise FileFormatError(f"cannot write MRC file {dest}: {exc}") from None
    return dest
