"""OME-Zarr: lazy reads of chosen levels with voxel sizes from the multiscales metadata."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from corrscan.core.io import read_image
from corrscan.core.io.zarr_io import read_ome_zarr, write_ome_zarr
from corrscan.errors import FileFormatError, InputError


def _write_with_zarr(path: Path, vol: np.ndarray, zarr_format: int) -> None:
    """An OME-Zarr written with zarr directly (nm units, a global scale, two levels)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    root.create_array("s0", data=vol, chunks=(4, 8, 8))
    root.create_array("s1", data=vol[::2, ::2, ::2].copy(), chunks=(4, 8, 8))
    ms = [
        {
            "version": "0.4" if zarr_format == 2 else "0.5",
            "axes": [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"],
            "datasets": [
                {
                    "path": "s0",
                    "coordinateTransformations": [{"type": "scale", "scale": [0.3, 0.2, 0.2]}],
                },
                {
                    "path": "s1",
                    "coordinateTransformations": [{"type": "scale", "scale": [0.6, 0.4, 0.4]}],
                },
            ],
            "coordinateTransformations": [{"type": "scale", "scale": [2.0, 1.0, 1.0]}],
        }
    ]
    if zarr_format == 2:
        root.attrs["multiscales"] = ms
    else:
        root.attrs["ome"] = {"version": "0.5", "multiscales": ms}


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_levels_and_voxel_sizes(tmp_path: Path, zarr_format: int) -> None:
    vol = np.random.default_rng(2).random((8, 16, 16)).astype(np.float32)
    p = tmp_path / "tomo.zarr"
    _write_with_zarr(p, vol, zarr_format)
    d0, vs0 = read_ome_zarr(p)
    assert isinstance(d0, da.Array)
    assert vs0 == pytest.approx((6.0, 2.0, 2.0))  # nm -> Å, times the global z scale 2
    np.testing.assert_array_equal(d0.compute(), vol)
    d1, vs1 = read_ome_zarr(p, level=1)
    assert d1.shape == (4, 8, 8)
    assert vs1 == pytest.approx((12.0, 4.0, 4.0))
    np.testing.assert_array_equal(d1[1:3].compute(), vol[::2, ::2, ::2][1:3])
    assert read_image(p)[1] == pytest.approx(2.0)
    with pytest.raises(InputError, match="level"):
        read_ome_zarr(p, level=2)


def test_write_ome_zarr_round_trip(tmp_path: Path) -> None:
    vol = np.random.default_rng(3).random((8, 12, 10)).astype(np.float32)
    p = write_ome_zarr(tmp_path / "w.zarr", vol, 1.5, n_levels=2)
    d, vs = read_ome_zarr(p, level=1)
    assert vs == pytest.approx((3.0, 3.0, 3.0))
    np.testing.assert_allclose(
        d.compute(), vol.reshape(4, 2, 6, 2, 5, 2).mean((1, 3, 5)), rtol=1e-6
    )


def test_missing_and_non_ome_zarr(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match="not found"):
        read_ome_zarr(tmp_path / "nope.zarr")
    g = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    g.create_array("0", shape=(4, 4), dtype="f4")
    with pytest.raises(FileFormatError, match="multiscales"):
        read_ome_zarr(tmp_path / "plain.zarr")
