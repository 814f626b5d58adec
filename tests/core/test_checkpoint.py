"""Checkpoints: atomic save, fingerprint check, corrupt files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corrscan.core.checkpoint import Checkpoint, fingerprint
from corrscan.errors import FileFormatError, InputError


def test_fingerprint_tracks_arrays_and_config():
    a = np.arange(10, dtype=np.float32)
    f1 = fingerprint({"step": 2.0}, a)
    assert f1 == fingerprint({"step": 2.0}, torch.arange(10, dtype=torch.float32))
    assert f1 != fingerprint({"step": 2.5}, a)
    b = a.copy()
    b[3] += 1e-6
    assert f1 != fingerprint({"step": 2.0}, b)
    # arrays nested in a configuration are hashed by content, not by a truncated repr
    big = np.arange(5000.0)
    changed = big.copy()
    changed[2500] = -1.0
    assert fingerprint({"angles": big}) == fingerprint({"angles": torch.from_numpy(big.copy())})
    assert fingerprint({"angles": big}) != fingerprint({"angles": changed})
    assert fingerprint([torch.from_numpy(big)]) != fingerprint([torch.from_numpy(changed)])


def test_save_load_roundtrip_and_mismatch(tmp_path):
    ck = Checkpoint(tmp_path / "s.pt", "abc")
    assert ck.load() is None
    state = {"done": [0, 1, 2], "sum": torch.arange(4, dtype=torch.int64)}
    ck.save(state)
    loaded = ck.load()
    assert loaded["done"] == [0, 1, 2] and torch.equal(loaded["sum"], state["sum"])
    assert not list(tmp_path.glob(".*partial*"))
    with pytest.raises(InputError, match="different search"):
        Checkpoint(tmp_path / "s.pt", "other").load()
    ck.remove()
    assert not ck.exists()


def test_maybe_save_respects_interval(tmp_path):
    ck = Checkpoint(tmp_path / "s.pt", "x", interval_s=3600)
    assert not ck.maybe_save(lambda: {"a": 1})
    ck.interval_s = 0
    assert ck.maybe_save(lambda: {"a": 1})
    assert ck.load() == {"a": 1}


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "s.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(FileFormatError, match="unreadable"):
        Checkpoint(p, "x").load()
