"""Volume inputs for the contrast job: arrays and files opened lazily, read one z slab at a time.

:func:`open_volume` turns any supported input into a :class:`VolumeSource` whose
:meth:`VolumeSource.read` returns only the requested slices as a NumPy array:

- NumPy arrays (including ``np.memmap``) and CPU torch tensors: a view, no copy.
- CuPy arrays and CUDA tensors: only the slab is copied to the host.
- Dask arrays and ``zarr`` arrays: only the chunks intersecting the slab are read.
- Paths: MRC (``.mrc .map .rec .mrcs .st .ali``, memory-mapped), OME-Zarr (``.zarr`` folder or
  any folder with OME ``multiscales`` metadata; pyramid ``level``), NumPy ``.npy`` (mmap).

2-D inputs ``(y, x)`` are treated as one slice ``(1, y, x)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from corrscan.errors import FileFormatError, InputError

__all__ = ["MRC_SUFFIXES", "VolumeSource", "open_volume"]

MRC_SUFFIXES = (".mrc", ".map", ".rec", ".mrcs", ".st", ".ali")


@dataclass
class VolumeSource:
    """A 3-D ``(z, y, x)`` volume that can be read slab by slab.

    Attributes
    ----------
    shape
        ``(z, y, x)`` (2-D inputs get ``z = 1``).
    dtype
        NumPy dtype of the stored values.
    name
        What to call the input in messages (file name or array kind).
    voxel_size
        ``(z, y, x)`` voxel size in Å when known (files), else ``None``.
    data
        The underlying array-like object (NumPy/memmap, dask, zarr, ...) indexed ``(z, y, x)``.
    """

    shape: tuple[int, int, int]
    dtype: np.dtype
    name: str
    voxel_size: tuple[float, float, float] | None
    data: Any
    _reader: Callable[[int, int], np.ndarray] = field(repr=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.dtype.kind not in "fiub":
            raise InputError(f"{self.name}: unsupported dtype {self.dtype} (real numbers only)")

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices ``z0 <= z < z1`` as a NumPy array `(z1 - z0, y, x)` (a view when possible)."""
        if not 0 <= z0 < z1 <= self.shape[0]:
            raise InputError(f"{self.name}: z range [{z0}, {z1}) outside 0..{self.shape[0]}")
        return self._reader(z0, z1)

    @property
    def nbytes_per_slice(self) -> int:
        """Bytes of one ``(y, x)`` slice in the stored dtype."""
        return int(self.shape[1] * self.shape[2] * self.dtype.itemsize)


def _check_shape(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(shape) not in (2, 3):
        raise InputError(
            f"{name} must be a 2-D image (y, x) or a 3-D volume (z, y, x), got shape {shape}"
        )
    if any(s == 0 for s in shape):
        raise InputError(f"{name} is empty: shape {shape}")
    if len(shape) == 2:
        return (1, int(shape[0]), int(shape[1]))
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def _from_indexable(
    data: Any, name: str, voxel_size: Any, to_numpy: Callable[[Any], np.ndarray]
) -> VolumeSource:
    shape3 = _check_shape(tuple(int(s) for s in data.shape), name)
    two_d = len(data.shape) == 2

    def reader(z0: int, z1: int) -> np.ndarray:
        if two_d:
            return to_numpy(data[:, :])[None]
        return to_numpy(data[z0:z1])

    dtype = np.dtype(data.dtype)
    return VolumeSource(
        shape3,
        dtype.newbyteorder("=") if dtype.byteorder != "|" else dtype,
        name,
        voxel_size,
        data,
        reader,
    )


def _torch_source(t: Any, name: str) -> VolumeSource:
    def to_np(x: Any) -> np.ndarray:
        return x.detach().cpu().numpy()

    shape3 = _check_shape(tuple(t.shape), name)
    two_d = t.ndim == 2
    dtype = to_np(t.reshape(-1)[:1]).dtype

    def reader(z0: int, z1: int) -> np.ndarray:
        return to_np(t)[None] if two_d else to_np(t[z0:z1])

    return VolumeSource(shape3, dtype, name, None, t, reader)


def _voxel3(v: Any) -> tuple[float, float, float] | None:
    if v is None:
        return None
    arr = np.atleast_1d(np.asarray(v, dtype=np.float64))
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    elif arr.size == 2:  # (y, x) image: z takes y's size
        arr = np.array([arr[0], arr[0], arr[1]])
    if arr.size != 3:
        return None
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def _open_mrc(path: Path) -> VolumeSource:
    """Memory-mapped MRC (``corrscan.core.io.mrc``): nothing is read until a slab is asked for."""
    from corrscan.core.io.mrc import read_mrc, read_mrc_header

    data, _ = read_mrc(path, mmap=True)
    vs = _voxel3(read_mrc_header(path).voxel_size)
    if vs is not None and not all(v > 0 for v in vs):
        vs = None
    return _from_indexable(data, path.name, vs, np.asarray)


def _ome_zarr_level(path: Path, level: int) -> tuple[Any, tuple[float, float, float] | None]:
    """Lazy (dask) array of one OME-Zarr pyramid level and its ``(z, y, x)`` voxel size in Å."""
    from corrscan.core.io.zarr_io import read_ome_zarr

    arr, voxel = read_ome_zarr(path, level=level)
    return arr, _voxel3(voxel)


def _is_ome_zarr_dir(path: Path) -> bool:
    return path.is_dir() and (
        path.suffix == ".zarr"
        or (path / ".zattrs").is_file()
        or (path / "zarr.json").is_file()
        or (path / ".zgroup").is_file()
    )


def open_volume(data: Any, *, level: int = 0, name: str | None = None) -> VolumeSource:
    """Wrap an array or open a file as a :class:`VolumeSource` (nothing is read yet).

    Parameters
    ----------
    data
        NumPy/CuPy/torch/Dask/zarr array `(z, y, x)` or `(y, x)`, or a path (``str`` /
        ``os.PathLike``) to an MRC, OME-Zarr or ``.npy`` file.
    level
        OME-Zarr pyramid level (0 = full resolution; negative counts from the coarsest).
    name
        Name used in messages (defaults to the file name or the array kind).

    Raises
    ------
    InputError
        Unsupported object, wrong number of dimensions, empty array.
    FileFormatError
        Missing or unreadable file, unknown extension.
    """
    if isinstance(data, VolumeSource):
        return data
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        label = name or path.name
        if not path.exists():
            raise FileFormatError(f"{path}: no such file or folder")
        suffix = path.suffix.lower()
        if suffix in MRC_SUFFIXES:
            src = _open_mrc(path)
            src.name = label
            return src
        if suffix == ".npy":
            arr = np.load(path, mmap_mode="r")
            return _from_indexable(arr, label, None, np.asarray)
        if _is_ome_zarr_dir(path):
            arr, voxel = _ome_zarr_level(path, level)
            return _from_indexable(arr, label, voxel, np.asarray)
        raise FileFormatError(
            f"{path}: unsupported file type {suffix!r}: use MRC ({', '.join(MRC_SUFFIXES)}), "
            "an OME-Zarr folder or .npy"
        )
    mod = type(data).__module__
    label = name or type(data).__name__
    if isinstance(data, np.ndarray):
        return _from_indexable(data, name or "array", None, np.asarray)
    if mod.startswith("torch"):
        return _torch_source(data, name or "tensor")
    if mod.startswith("cupy"):
        return _from_indexable(data, name or "cupy array", None, lambda x: x.get())
    if mod.startswith("dask"):
        return _from_indexable(data, name or "dask array", None, lambda x: np.asarray(x.compute()))
    if mod.startswith("zarr"):
        return _from_indexable(data, name or "zarr array", None, np.asarray)
    if isinstance(data, (list, tuple)):
        return _from_indexable(np.asarray(data), label, None, np.asarray)
    raise InputError(
        f"unsupported volume input {mod}.{type(data).__name__}: give a NumPy/torch/CuPy/Dask/"
        "zarr array (z, y, x) or a path to an MRC, OME-Zarr or .npy file"
    )
