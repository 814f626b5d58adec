"""TIFF stacks: round trip, chunked iteration, truncated files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from corrscan.core.io import read_image
from corrscan.core.io.tiff import iter_tiff_frames, read_tiff, write_tiff
from corrscan.errors import FileFormatError


@pytest.mark.parametrize("imagej", [False, True])
def test_round_trip_and_chunks(tmp_path: Path, imagej: bool) -> None:
    a = (np.random.default_rng(1).random((11, 8, 9)) * 1000).astype(np.uint16)
    p = write_tiff(tmp_path / "s.tif", a, imagej=imagej)
    np.testing.assert_array_equal(read_tiff(p), a)
    chunks = list(iter_tiff_frames(p, 4))
    assert [s for s, _ in chunks] == [0, 4, 8]
    assert [c.shape[0] for _, c in chunks] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), a)
    data, vs = read_image(p)
    assert vs is None and data.shape == a.shape


def test_single_image(tmp_path: Path) -> None:
    a = np.arange(20, dtype=np.float32).reshape(4, 5)
    p = write_tiff(tmp_path / "i.tiff", a)
    np.testing.assert_array_equal(read_tiff(p), a)
    ((start, frames),) = list(iter_tiff_frames(p, 3))
    assert start == 0 and frames.shape == (1, 4, 5)


def test_truncated_and_corrupt_tiff_raise_file_format_error(tmp_path: Path) -> None:
    a = np.ones((10, 16, 16), np.uint16)
    raw = write_tiff(tmp_path / "s.tif", a).read_bytes()
    for cut in (60, len(raw) // 2, len(raw) - 40):
        f = tmp_path / f"cut{cut}.tif"
        f.write_bytes(raw[:cut])
        with pytest.raises(FileFormatError, match=f.name):
            read_tiff(f)
        with pytest.raises(FileFormatError, match=f.name):
            list(iter_tiff_frames(f, 4))
    g = tmp_path / "garbage.tif"
    g.write_bytes(b"\x00" * 100)
    with pytest.raises(FileFormatError, match="garbage.tif"):
        read_tiff(g)
    with pytest.raises(FileFormatError, match="not found"):
        read_tiff(tmp_path / "missing.tif")
