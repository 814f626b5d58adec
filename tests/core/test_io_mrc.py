"""MRC read/write: round trips with voxel size, memory maps, truncated/corrupt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from corrscan.core.io import read_image
from corrscan.core.io.mrc import read_mrc, read_mrc_header, write_mrc
from corrscan.errors import FileFormatError, InputError, ResultExistsError


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint16, np.int8])
def test_round_trip_keeps_data_and_voxel_size(tmp_path: Path, dtype) -> None:
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(5, 6, 7)) * 50).astype(dtype)
    p = write_mrc(tmp_path / "vol.mrc", a, 1.234)
    b, vs = read_mrc(p)
    assert vs == pytest.approx(1.234, rel=1e-6)
    np.testing.assert_array_equal(b, a.astype(np.float32) if dtype == np.float64 else a)
    assert b.dtype.isnative


def test_anisotropic_voxel_size_stack_and_header(tmp_path: Path) -> None:
    a = torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(3, 4, 5)
    write_mrc(tmp_path / "s.mrcs", a, (2.0, 1.5, 1.25), origin=(1.0, 2.0, 3.0))
    h = read_mrc_header(tmp_path / "s.mrcs")
    assert h.shape == (3, 4, 5) and h.is_stack
    assert h.voxel_size == pytest.approx((2.0, 1.5, 1.25))
    assert h.origin == pytest.approx((1.0, 2.0, 3.0))
    data, vs = read_mrc(tmp_path / "s.mrcs", mmap=True)
    assert isinstance(data, np.memmap) and vs == pytest.approx(1.25)
    np.testing.assert_array_equal(data, a.numpy())
    img = write_mrc(tmp_path / "i.mrc", a[0], 0.8)
    assert read_mrc(img)[0].shape == (4, 5)
    assert read_image(img)[1] == pytest.approx(0.8)


def test_overwrite_and_bad_data(tmp_path: Path) -> None:
    p = write_mrc(tmp_path / "x.mrc", np.zeros((4, 4), np.float32), 1.0)
    with pytest.raises(ResultExistsError):
        write_mrc(p, np.ones((4, 4), np.float32), 1.0, overwrite=False)
    assert read_mrc(p)[0].max() == 0.0
    with pytest.raises(InputError, match="2-D or 3-D"):
        write_mrc(tmp_path / "y.mrc", np.zeros(4), 1.0)
    with pytest.raises(InputError, match="do not fit"):
        write_mrc(tmp_path / "z.mrc", np.array([[0, 2**40]], dtype=np.int64), 1.0)
    assert not any(f.name.startswith(".") for f in tmp_path.iterdir())  # no temp files left


def test_missing_truncated_and_corrupt_files_raise_file_format_error(tmp_path: Path) -> None:
    p = write_mrc(tmp_path / "v.mrc", np.ones((4, 8, 8), np.float32), 2.0)
    raw = p.read_bytes()
    cases = {
        "missing.mrc": None,
        "short_data.mrc": raw[:-7],
        "short_header.mrc": raw[:300],
        "garbage.mrc": b"not an mrc file " * 100,
    }
    for name, content in cases.items():
        f = tmp_path / name
        if content is not None:
            f.write_bytes(content)
        with pytest.raises(FileFormatError, match=name):
            read_mrc(f)
    with pytest.raises(FileFormatError, match="truncated"):
        read_mrc(tmp_path / "short_data.mrc", mmap=True)
