"""STAR files: RELION 4 / 5 column names round trip, truncated files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from corrscan.core.io.star import from_relion, read_star, relion_particles, write_star
from corrscan.errors import FileFormatError, InputError


def _table_3d() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 6
    return pd.DataFrame(
        {
            "x": rng.integers(0, 200, n).astype(float),
            "y": rng.integers(0, 180, n).astype(float),
            "z": rng.integers(0, 60, n).astype(float),
            "phi": rng.uniform(-180, 180, n).round(3),
            "theta": rng.uniform(0, 180, n).round(3),
            "psi": rng.uniform(-180, 180, n).round(3),
            "score": rng.uniform(0, 1, n).round(5),
            "tomogram": [f"TS_{i % 2:02d}" for i in range(n)],
        }
    )


def test_relion4_round_trip(tmp_path: Path) -> None:
    df = _table_3d()
    r4 = relion_particles(df, version=4)
    for col in (
        "rlnCoordinateX",
        "rlnCoordinateY",
        "rlnCoordinateZ",
        "rlnAngleRot",
        "rlnAngleTilt",
        "rlnAnglePsi",
        "rlnAutopickFigureOfMerit",
        "rlnTomoName",
    ):
        assert col in r4.columns
    p = write_star(tmp_path / "p4.star", {"particles": r4})
    assert "_rlnCoordinateX" in p.read_text()
    back = from_relion(read_star(p)["particles"])
    pd.testing.assert_frame_equal(back[df.columns], df, check_dtype=False)


def test_relion5_centred_angstrom_round_trip(tmp_path: Path) -> None:
    df = _table_3d()
    shape, ps = (60, 180, 200), 7.84
    r5 = relion_particles(df, version=5, pixel_size=ps, volume_shape=shape)
    assert "rlnCoordinateX" not in r5.columns
    np.testing.assert_allclose(r5["rlnCenteredCoordinateXAngst"], (df["x"] - 100) * ps)
    np.testing.assert_allclose(r5["rlnCenteredCoordinateZAngst"], (df["z"] - 30) * ps)
    p = write_star(tmp_path / "p5.star", {"particles": r5})
    text = p.read_text()
    assert "_rlnCenteredCoordinateYAngst" in text and "_rlnTomoName" in text
    back = from_relion(read_star(p)["particles"], pixel_size=ps, volume_shape=shape)
    pd.testing.assert_frame_equal(back[df.columns], df, check_dtype=False, atol=1e-4)
    with pytest.raises(InputError, match="volume_shape"):
        relion_particles(df, version=5, pixel_size=ps)


def test_2d_table_and_multiple_blocks(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "x": [10.0, 20.0],
            "y": [5.0, 7.0],
            "defocus_u": [15000.0, 15500.0],
            "micrograph": ["a.mrc", "b.mrc"],
        }
    )
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnVoltage": [300.0]})
    p = write_star(tmp_path / "p.star", {"optics": optics, "particles": relion_particles(df)})
    blocks = read_star(p)
    assert list(blocks) == ["optics", "particles"]
    assert list(blocks["particles"].columns) == [
        "rlnCoordinateX",
        "rlnCoordinateY",
        "rlnDefocusU",
        "rlnMicrographName",
    ]
    pd.testing.assert_frame_equal(from_relion(blocks["particles"]), df, check_dtype=False)


def test_truncated_and_missing_star_raise_file_format_error(tmp_path: Path) -> None:
    p = write_star(tmp_path / "ok.star", relion_particles(_table_3d()))
    text = p.read_text()
    cut = tmp_path / "cut.star"
    cut.write_text(text[: len(text) - 25])  # ends in the middle of the last row
    with pytest.raises(FileFormatError, match="cut.star"):
        read_star(cut)
    junk = tmp_path / "junk.star"
    junk.write_bytes(b"\xff\xfe binary")
    with pytest.raises(FileFormatError, match="junk.star"):
        read_star(junk)
    with pytest.raises(FileFormatError, match="not found"):
        read_star(tmp_path / "missing.star")
