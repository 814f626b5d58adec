"""Property-based fuzzing of every reader: corrupt input gives a clear corrscan error.

Each reader gets random bytes, truncations of a valid file and single-byte mutations of a valid
file. The only acceptable outcomes are a successful read or a :class:`CorrscanError`
(never an uncaught library exception, never a hang). Budgets are bounded for CI.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corrscan.core.checkpoint import Checkpoint
from corrscan.core.config import Config
from corrscan.core.io import read_image, read_mrc, read_star, read_tiff, write_mrc, write_tiff
from corrscan.core.io.star import write_star
from corrscan.core.io.structure import read_atoms
from corrscan.errors import CorrscanError

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class _Cfg(Config):
    pixel_size: float = 1.0
    n: int = 1


def _valid_bytes(tmp_path, kind: str) -> bytes:
    p = tmp_path / f"valid.{kind}"
    rng = np.random.default_rng(0)
    if kind == "mrc":
        write_mrc(p, rng.standard_normal((4, 6, 5)).astype(np.float32), voxel_size=1.5)
    elif kind == "tif":
        write_tiff(p, rng.integers(0, 1000, (3, 8, 8)).astype(np.uint16))
    elif kind == "star":
        write_star(
            p, {"particles": pd.DataFrame({"rlnCoordinateX": [1.0, 2.0], "rlnAngleRot": [0, 9]})}
        )
    elif kind == "yaml":
        p.write_text("pixel_size: 1.2\nn: 3\n")
    elif kind in ("pdb", "cif", "gro"):
        from tests.core.test_io_structure import ATOMS, _cif_text, _gro_text, _pdb_text

        text = {"pdb": _pdb_text, "cif": _cif_text, "gro": _gro_text}[kind](ATOMS)
        p.write_text(text)
    return p.read_bytes()


READERS = {
    "mrc": lambda p: read_mrc(p),
    "tif": lambda p: read_tiff(p),
    "star": lambda p: read_star(p),
    "yaml": lambda p: _Cfg.from_yaml(p),
    "pdb": lambda p: read_atoms(p),
    "cif": lambda p: read_atoms(p),
    "gro": lambda p: read_atoms(p),
}


def _read_or_clear_error(reader, path) -> None:
    try:
        reader(path)
    except CorrscanError as exc:
        assert str(exc)  # a message naming the problem
    except RecursionError:  # pragma: no cover - would be a bug
        pytest.fail("reader recursed without bound")


@pytest.mark.parametrize("kind", sorted(READERS))
@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes(tmp_path, kind, data):
    p = tmp_path / f"fuzz.{kind}"
    p.write_bytes(data)
    _read_or_clear_error(READERS[kind], p)


@pytest.mark.parametrize("kind", sorted(READERS))
@FUZZ
@given(frac=st.floats(0.0, 1.0), pos=st.floats(0.0, 1.0), byte=st.integers(0, 255))
def test_truncated_and_mutated(tmp_path, kind, frac, pos, byte):
    valid = _valid_bytes(tmp_path, kind)
    p = tmp_path / f"cut.{kind}"
    p.write_bytes(valid[: int(len(valid) * frac)])
    _read_or_clear_error(READERS[kind], p)
    mutated = bytearray(valid)
    mutated[min(int(len(valid) * pos), len(valid) - 1)] = byte
    p.write_bytes(bytes(mutated))
    _read_or_clear_error(READERS[kind], p)


@FUZZ
@given(data=st.binary(max_size=512))
def test_checkpoint_and_image_dispatch(tmp_path, data):
    p = tmp_path / "c.pt"
    p.write_bytes(data)
    _read_or_clear_error(lambda q: Checkpoint(q, "x").load(), p)
    q = tmp_path / "x.npy"
    q.write_bytes(data)
    _read_or_clear_error(read_image, q)


def test_missing_files_are_named(tmp_path):
    for kind, reader in READERS.items():
        missing = tmp_path / f"absent.{kind}"
        with pytest.raises(CorrscanError, match="absent"):
            reader(missing)
