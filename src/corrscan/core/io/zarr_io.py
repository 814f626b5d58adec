"""OME-Zarr (NGFF 0.4 / 0.5) multiscale images, read lazily with dask.

Voxel sizes come from the multiscales metadata: the dataset's ``scale`` transform (times a
multiscale-level ``scale``, if any) for the spatial axes, converted to Å from the axes' units
(angstrom, nanometer, micrometer, ...; missing units are taken as Å).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from corrscan.errors import FileFormatError, InputError

__all__ = ["ome_zarr_levels", "read_ome_zarr", "write_ome_zarr"]

_UNIT_TO_ANGSTROM = {
    None: 1.0,
    "": 1.0,
    "angstrom": 1.0,
    "Å": 1.0,
    "A": 1.0,
    "picometer": 0.01,
    "nanometer": 10.0,
    "nm": 10.0,
    "micrometer": 1e4,
    "µm": 1e4,
    "um": 1e4,
    "millimeter": 1e7,
    "meter": 1e10,
}


def _open_group(p: Path):
    import zarr

    if not p.exists():
        raise FileFormatError(f"OME-Zarr not found: {p}")
    try:
        return zarr.open(str(p), mode="r")
    except Exception as exc:
        raise FileFormatError(f"{p} is not a readable Zarr store: {exc}") from None


def _multiscales(p: Path, group: Any) -> dict[str, Any]:
    attrs = dict(group.attrs)
    ms = attrs.get("multiscales")
    if ms is None and isinstance(attrs.get("ome"), Mapping):  # NGFF 0.5 (Zarr v3)
        ms = attrs["ome"].get("multiscales")
    if not ms or not isinstance(ms, Sequence):
        raise FileFormatError(f"{p} has no OME-Zarr 'multiscales' metadata")
    return dict(ms[0])


def _scale_of(transforms: Any) -> list[float] | None:
    for t in transforms or []:
        if isinstance(t, Mapping) and t.get("type") == "scale":
            return [float(v) for v in t["scale"]]
    return None


def ome_zarr_levels(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Levels of an OME-Zarr image: ``[{"path", "shape", "voxel_size" (z, y, x) Å}, ...]``."""
    p = Path(path)
    group = _open_group(p)
    ms = _multiscales(p, group)
    return [_level_info(p, group, ms, i) for i in range(len(ms.get("datasets", [])))]


def _level_info(p: Path, group: Any, ms: Mapping[str, Any], level: int) -> dict[str, Any]:
    datasets = list(ms.get("datasets", []))
    if not datasets:
        raise FileFormatError(f"{p}: multiscales lists no datasets")
    if not (0 <= level < len(datasets)):
        raise InputError(f"{p} has levels 0..{len(datasets) - 1}, level {level} requested")
    ds = datasets[level]
    try:
        arr = group[str(ds["path"])]
    except Exception as exc:
        raise FileFormatError(f"{p}: dataset {ds.get('path')!r} is missing: {exc}") from None
    ndim = len(arr.shape)
    axes = ms.get("axes")
    if axes is None:  # NGFF < 0.4: assume spatial trailing axes
        axes = [{"name": n, "type": "space"} for n in "tczyx"[-ndim:]]
    axes = [a if isinstance(a, Mapping) else {"name": str(a)} for a in axes]
    if len(axes) != ndim:
        raise FileFormatError(f"{p}: {len(axes)} axes in metadata for a {ndim}-D array")
    scale = _scale_of(ds.get("coordinateTransformations")) or [1.0] * ndim
    outer = _scale_of(ms.get("coordinateTransformations"))
    if outer is not None:
        scale = [a * b for a, b in zip(scale, outer, strict=True)]
    spatial: list[float] = []
    for ax, s in zip(axes, scale, strict=True):
        kind = ax.get("type")
        if kind == "space" or (kind is None and ax.get("name") in ("z", "y", "x")):
            unit = ax.get("unit")
            if unit not in _UNIT_TO_ANGSTROM:
                raise FileFormatError(f"{p}: unsupported axis unit {unit!r}")
            spatial.append(s * _UNIT_TO_ANGSTROM[unit])
    return {
        "path": str(ds["path"]),
        "shape": tuple(int(s) for s in arr.shape),
        "voxel_size": tuple(spatial),
        "array": arr,
    }


def read_ome_zarr(path: str | os.PathLike, *, level: int = 0) -> tuple[Any, tuple[float, ...]]:
    """Open one resolution level of an OME-Zarr image lazily.

    Parameters
    ----------
    path
        The ``.zarr`` folder (the image group holding ``multiscales``).
    level
        Resolution level (0 = full resolution).

    Returns
    -------
    data, voxel_size
        A ``dask.array.Array`` (nothing read yet) and the spatial voxel size in Å, ordered like
        the array's spatial axes (`(z, y, x)` for a volume, `(y, x)` for an image).

    Raises
    ------
    FileFormatError
        Missing store, no multiscales metadata, missing dataset or unknown units.
    InputError
        Level out of range.
    """
    import dask.array as da

    p = Path(path)
    group = _open_group(p)
    info = _level_info(p, group, _multiscales(p, group), int(level))
    return da.from_zarr(info["array"]), info["voxel_size"]


def write_ome_zarr(
    path: str | os.PathLike,
    data: Any,
    voxel_size: float | Sequence[float],
    *,
    n_levels: int = 1,
    chunks: int | Sequence[int] = 64,
    overwrite: bool = False,
) -> Path:
    """Write a 2-D/3-D array as an NGFF 0.4 OME-Zarr with ``n_levels`` 2x-binned levels.

    Parameters
    ----------
    path
        ``.zarr`` folder to create.
    data
        `(H, W)` or `(D, H, W)` array (NumPy/CuPy/torch).
    voxel_size
        Å per pixel: a number or one value per axis, `(z, y, x)` / `(y, x)`.
    n_levels
        Resolution levels; level ``i`` is the ``2**i`` mean-binned array (odd edges cropped)
        with scale ``voxel_size * 2**i``.
    chunks
        Chunk size per axis (clipped to the array shape).
    overwrite
        Replace an existing store; otherwise :class:`~corrscan.errors.ResultExistsError`.

    Returns
    -------
    Path
        The store. Axes are written as ``(z,) y, x`` in angstrom.
    """
    import numpy as np
    import zarr

    from corrscan.core.arrays import as_numpy

    a = np.asarray(as_numpy(data))
    if a.ndim not in (2, 3):
        raise InputError(f"OME-Zarr data must be 2-D or 3-D, got {a.shape}")
    vs = (
        [float(voxel_size)] * a.ndim if np.ndim(voxel_size) == 0 else [float(v) for v in voxel_size]
    )
    if len(vs) != a.ndim:
        raise InputError(f"voxel_size must have {a.ndim} values, got {voxel_size!r}")
    p = Path(path)
    if p.exists() and not overwrite:
        from corrscan.errors import ResultExistsError

        raise ResultExistsError(f"{p} exists (pass overwrite=True to replace it)")
    root = zarr.open_group(str(p), mode="w", zarr_format=2)
    names = "zyx"[-a.ndim :]
    datasets = []
    level = a
    chunk_sizes = [int(c) for c in np.broadcast_to(chunks, (a.ndim,))]
    for i in range(int(n_levels)):
        root.create_array(
            str(i),
            data=np.ascontiguousarray(level),
            chunks=tuple(min(c, s) for c, s in zip(chunk_sizes, level.shape, strict=True)),
        )
        datasets.append(
            {
                "path": str(i),
                "coordinateTransformations": [{"type": "scale", "scale": [v * 2**i for v in vs]}],
            }
        )
        crop = tuple(slice(0, (s // 2) * 2) for s in level.shape)
        lv = level[crop]
        lv = lv.reshape([x for s in lv.shape for x in (s // 2, 2)]).mean(
            axis=tuple(range(1, 2 * a.ndim, 2))
        )
        level = lv.astype(a.dtype) if a.dtype.kind == "f" else lv
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": n, "type": "space", "unit": "angstrom"} for n in names],
            "datasets": datasets,
        }
    ]
    return p
