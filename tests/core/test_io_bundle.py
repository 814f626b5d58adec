"""Result bundles: contents, lazy reads, overwrite rules, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import corrscan.core.io.bundle as bundle_mod
from corrscan.core.io.bundle import read_bundle, write_bundle
from corrscan.core.io.mrc import read_mrc
from corrscan.errors import FileFormatError, ResultExistsError


def _content():
    rng = np.random.default_rng(0)
    maps = {
        "mip": torch.from_numpy(rng.normal(size=(12, 13)).astype(np.float32)),
        "best_index": np.arange(156, dtype=np.int64).reshape(12, 13) * 1_000_003,
        "best_phi": rng.uniform(0, 360, (12, 13)),
    }
    tables = {"peaks": pd.DataFrame({"x": [1.5, 2.5], "y": [3.0, 4.0], "score": [9.1, 8.2]})}
    meta = {
        "config": {"psi_step": 1.5},
        "n_correlations": np.int64(123456),
        "timings": {"total_s": 1.25},
    }
    return maps, tables, meta


def test_write_and_read_bundle(tmp_path: Path) -> None:
    maps, tables, meta = _content()
    p = write_bundle(
        tmp_path / "run1", maps=maps, metadata=meta, voxel_size=1.06, tables=tables, star=True
    )
    assert sorted(f.name for f in p.iterdir()) == [
        "best_index.npy",
        "best_phi.mrc",
        "metadata.json",
        "mip.mrc",
        "peaks.csv",
        "peaks.star",
    ]
    assert read_mrc(p / "mip.mrc")[1] == pytest.approx(1.06)
    b = read_bundle(p)
    np.testing.assert_array_equal(b.maps["mip"], maps["mip"].numpy())
    np.testing.assert_array_equal(b.maps["best_index"], maps["best_index"])  # lossless int64
    np.testing.assert_allclose(b.maps["best_phi"], maps["best_phi"], rtol=1e-6)
    assert isinstance(b.maps["mip"], np.memmap)
    pd.testing.assert_frame_equal(b.tables["peaks"], tables["peaks"])
    assert b.metadata["metadata"]["n_correlations"] == 123456
    assert b.metadata["complete"] is True and "torch" in b.metadata["versions"]
    assert b.voxel_size == pytest.approx(1.06)


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    maps, _tables, meta = _content()
    p = write_bundle(tmp_path / "run", maps=maps, metadata=meta, voxel_size=1.0)
    with pytest.raises(ResultExistsError):
        write_bundle(p, maps={"other": np.zeros((2, 2))}, metadata={}, voxel_size=1.0)
    assert "mip" in read_bundle(p).maps
    write_bundle(p, maps={"other": np.zeros((2, 2))}, metadata={}, voxel_size=1.0, overwrite=True)
    assert list(read_bundle(p).maps) == ["other"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["run"]


def test_failure_mid_write_leaves_no_bundle(tmp_path: Path, monkeypatch) -> None:
    maps, tables, meta = _content()
    calls = {"n": 0}
    real = bundle_mod.write_mrc

    def failing_write_mrc(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(bundle_mod, "write_mrc", failing_write_mrc)
    with pytest.raises(OSError, match="simulated"):
        write_bundle(tmp_path / "run", maps=maps, metadata=meta, voxel_size=1.0, tables=tables)
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor a partial folder
    # a failed overwrite keeps the previous finished bundle intact
    monkeypatch.setattr(bundle_mod, "write_mrc", real)
    p = write_bundle(tmp_path / "run", maps=maps, metadata=meta, voxel_size=1.0)
    calls["n"] = 0
    monkeypatch.setattr(bundle_mod, "write_mrc", failing_write_mrc)
    with pytest.raises(OSError):
        write_bundle(p, maps=maps, metadata={"new": 1}, voxel_size=1.0, overwrite=True)
    assert read_bundle(p).metadata["metadata"]["n_correlations"] == 123456
    assert sorted(f.name for f in tmp_path.iterdir()) == ["run"]


def test_unfinished_or_foreign_folders_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "mip.mrc").write_bytes(b"")
    with pytest.raises(FileFormatError, match="metadata.json is missing"):
        read_bundle(tmp_path / "half")
    (tmp_path / "half" / "metadata.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(FileFormatError, match="not a finished"):
        read_bundle(tmp_path / "half")
    with pytest.raises(FileFormatError, match="not found"):
        read_bundle(tmp_path / "nothing")
