"""``corrscan track`` and ``corrscan track-zlut`` end to end on a simulated TIFF movie."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from corrscan.cli.main import app
from corrscan.core.io.tiff import write_tiff
from corrscan.errors import ResultExistsError
from corrscan.synthetic.beads import simulate_beads


def _two_bead_frames(xyz_a: np.ndarray, xyz_b: np.ndarray, seed: int) -> np.ndarray:
    """Frames (n, 72, 144) as uint16 counts: bead A centred in the left half, B in the right."""
    a, _ = simulate_beads(xyz_a, size_px=72, photons=1000.0, as_counts=True, seed=seed)
    b, _ = simulate_beads(xyz_b, size_px=72, photons=1000.0, as_counts=True, seed=seed + 1)
    return np.concatenate([a, b], axis=2)


@pytest.fixture
def movie_dir(tmp_path):
    rng = np.random.default_rng(0)
    t = 20
    z_a = 800.0 * np.sin(np.arange(t) / 4.0)
    z_b = np.linspace(-600.0, 600.0, t)
    xy = rng.normal(0.0, 40.0, (t, 4))
    frames = _two_bead_frames(np.c_[xy[:, :2], z_a], np.c_[xy[:, 2:], z_b], seed=1)
    frames[7, :, :72] = 400  # a dropped frame for bead A only
    write_tiff(tmp_path / "movie.tif", frames)
    z_sweep = np.arange(-2000.0, 2001.0, 100.0)
    zeros = np.zeros((z_sweep.size, 2))
    sweep = _two_bead_frames(np.c_[zeros, z_sweep], np.c_[zeros, z_sweep], seed=5)
    write_tiff(tmp_path / "sweep.tif", sweep)
    np.savetxt(tmp_path / "z.txt", z_sweep)
    (tmp_path / "rois.csv").write_text("bead,x,y\nA,36,36\nB,108,36\n")
    truth = pd.DataFrame(
        {"x_a": 36 + xy[:, 0] / 100, "y_a": 36 + xy[:, 1] / 100, "z_a": z_a, "z_b": z_b}
    )
    return tmp_path, truth


def test_track_zlut_then_track(movie_dir) -> None:
    d, truth = movie_dir
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "track-zlut",
            str(d / "sweep.tif"),
            "--rois",
            str(d / "rois.csv"),
            "--roi-size",
            "64",
            "--z",
            str(d / "z.txt"),
            "-o",
            str(d / "lut.npz"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (d / "lut.npz").is_file() and "2 table(s)" in res.output
    res = runner.invoke(
        app,
        [
            "track",
            str(d / "movie.tif"),
            "--rois",
            str(d / "rois.csv"),
            "--zlut",
            str(d / "lut.npz"),
            "--chunk",
            "8",
            "--out",
            str(d / "tracks.csv"),
            "--nm-per-px",
            "100",
            "--threads",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    df = pd.read_csv(d / "tracks.csv")
    assert list(df.columns[:7]) == ["frame", "bead", "x", "y", "z", "flags", "r"]
    assert len(df) == 40 and (d / "tracks.png").stat().st_size > 10_000
    a = df[df.bead == "A"].set_index("frame")
    b = df[df.bead == "B"].set_index("frame")
    assert a.loc[7, "flags"] != 0 and np.isnan(a.loc[7, "z"])  # dropped frame: this bead only
    assert b.loc[7, "flags"] == 0
    ok = a.index != 7
    assert np.sqrt(np.mean((a.x[ok] - truth.x_a[ok]) ** 2)) * 100 < 5.0  # nm
    assert np.sqrt(np.mean((a.y[ok] - truth.y_a[ok]) ** 2)) * 100 < 5.0
    assert np.sqrt(np.mean((a.z[ok] - truth.z_a[ok]) ** 2)) < 15.0
    assert np.sqrt(np.mean((b.z - truth.z_b) ** 2)) < 15.0
    np.testing.assert_allclose(df.x_nm, df.x * 100)
    # existing output is protected: ResultExistsError, file untouched
    before = (d / "tracks.csv").read_bytes()
    res = runner.invoke(
        app,
        [
            "track",
            str(d / "movie.tif"),
            "--rois",
            str(d / "rois.csv"),
            "--roi-size",
            "64",
            "--out",
            str(d / "tracks.csv"),
            "--plot",
            "none",
        ],
    )
    assert res.exit_code != 0
    assert isinstance(res.exception, ResultExistsError)
    assert (d / "tracks.csv").read_bytes() == before


def test_track_bad_inputs(tmp_path) -> None:
    runner = CliRunner()
    write_tiff(tmp_path / "m.tif", np.zeros((2, 32, 32), dtype=np.uint16))
    (tmp_path / "rois.csv").write_text("a,b\n1,2\n")
    res = runner.invoke(
        app, ["track", str(tmp_path / "m.tif"), "--rois", str(tmp_path / "rois.csv")]
    )
    assert res.exit_code != 0
    assert "top,bottom,left,right" in str(res.exception) or "top,bottom" in res.output
