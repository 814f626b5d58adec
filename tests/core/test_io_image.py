"""read_image: dispatch by extension, voxel sizes, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from corrscan.core.io import read_image, write_mrc, write_ome_zarr, write_tiff
from corrscan.errors import FileFormatError


def test_dispatch_by_extension(tmp_path: Path) -> None:
    a = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    for name in ("v.mrc", "v.map", "v.rec", "s.mrcs"):
        data, vs = read_image(write_mrc(tmp_path / name, a, 2.5))
        np.testing.assert_array_equal(data, a)
        assert vs == pytest.approx(2.5)
    data, vs = read_image(write_tiff(tmp_path / "t.tiff", a))
    np.testing.assert_array_equal(data, a)
    assert vs is None
    np.save(tmp_path / "n.npy", a)
    data, vs = read_image(tmp_path / "n.npy", mmap=True)
    assert isinstance(data, np.memmap) and vs is None
    data, vs = read_image(write_ome_zarr(tmp_path / "z.zarr", a, 3.0), level=0)
    np.testing.assert_array_equal(np.asarray(data), a)
    assert vs == pytest.approx(3.0)


def test_unknown_missing_and_corrupt(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(FileFormatError, match="unknown image format"):
        read_image(tmp_path / "x.png")
    with pytest.raises(FileFormatError, match="not found"):
        read_image(tmp_path / "missing.mrc")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(FileFormatError, match="bad.npy"):
        read_image(tmp_path / "bad.npy")
