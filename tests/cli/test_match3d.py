"""``corrscan match3d search`` and ``peaks`` end to end on a small synthetic tomogram."""

from __future__ import annotations

import numpy as np
import pandas as pd
import starfile
from typer.testing import CliRunner

from corrscan.cli.main import app
from corrscan.core.io.mrc import write_mrc
from corrscan.match3d import MatchResult
from corrscan.match3d.results import read_table
from corrscan.synthetic.tomogram import simulate_tomogram


def test_search_then_peaks(tmp_path):
    tomo, truth = simulate_tomogram(
        32,
        template_shape=11,
        n_particles=2,
        noise_std=0.1,
        wedge=None,
        seed=2,
        n_atoms=15,
        sigma=1.0,
        pixel_size=2.0,
    )
    write_mrc(tmp_path / "tomo.mrc", tomo, 2.0)
    write_mrc(tmp_path / "tmpl.mrc", truth["template"], 2.0)
    out = tmp_path / "res"
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "match3d",
            "search",
            str(tmp_path / "tomo.mrc"),
            str(tmp_path / "tmpl.mrc"),
            "-o",
            str(out),
            "--angular-step",
            "30",
            "--interpolation-order",
            "1",
            "--lowpass",
            "5",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "360 rotations" in r.output
    res = MatchResult.read(out)
    assert res.pixel_size == 2.0 and res.scores.shape == tomo.shape
    assert res.metadata["filters"]["lowpass_angstrom"] == 5.0
    # refuses to overwrite
    r = runner.invoke(
        app,
        [
            "match3d",
            "search",
            str(tmp_path / "tomo.mrc"),
            str(tmp_path / "tmpl.mrc"),
            "-o",
            str(out),
            "--n-rotations",
            "2",
        ],
    )
    assert r.exit_code == 2 and "exists" in r.output
    for fmt, name in (("csv", "p.csv"), ("relion4", "p4.star"), ("relion5", "p5.star")):
        r = runner.invoke(
            app,
            [
                "match3d",
                "peaks",
                str(out),
                "-o",
                str(tmp_path / name),
                "--format",
                fmt,
                "--num-peaks",
                "2",
                "--min-distance",
                "8",
            ],
        )
        assert r.exit_code == 0, r.output
        df = read_table(tmp_path / name, pixel_size=2.0, shape=tomo.shape)
        got = {tuple(np.rint(v).astype(int)) for v in df[["z", "y", "x"]].to_numpy()}
        assert got == {tuple(p) for p in truth["positions"]}
    star4 = starfile.read(tmp_path / "p4.star")
    assert {"rlnCoordinateX", "rlnAngleRot", "rlnTomoName"} <= set(star4.columns)
    star5 = starfile.read(tmp_path / "p5.star")
    assert "rlnCenteredCoordinateXAngst" in star5.columns
    csv = pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(csv.x_angstrom, csv.x * 2.0)


def test_bad_arguments_exit_cleanly(tmp_path):
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "match3d",
            "search",
            str(tmp_path / "none.mrc"),
            str(tmp_path / "none.mrc"),
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 2 and "not found" in r.output
    r = runner.invoke(app, ["match3d", "search", "--this-is-not-an-option"])
    assert r.exit_code != 0


def test_search_on_dask_workers_equals_in_process(tmp_path):
    tomo, truth = simulate_tomogram(
        24, template_shape=9, n_particles=1, noise_std=0.1, wedge=None, seed=3, n_atoms=12,
        sigma=1.0, pixel_size=2.0,
    )  # fmt: skip
    write_mrc(tmp_path / "tomo.mrc", tomo, 2.0)
    write_mrc(tmp_path / "tmpl.mrc", truth["template"], 2.0)
    common = ["match3d", "search", str(tmp_path / "tomo.mrc"), str(tmp_path / "tmpl.mrc"),
              "--angular-step", "45", "--interpolation-order", "1", "--batch-size", "8",
              "--threads", "1"]  # fmt: skip
    runner = CliRunner()
    r = runner.invoke(app, [*common, "-o", str(tmp_path / "local")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*common, "-o", str(tmp_path / "dask"), "--workers", "2"])
    assert r.exit_code == 0, r.output
    local, dask = MatchResult.read(tmp_path / "local"), MatchResult.read(tmp_path / "dask")
    np.testing.assert_array_equal(np.asarray(dask.scores), np.asarray(local.scores))
    assert not (tmp_path / "dask.checkpoint.pt").exists()


def test_batch_skips_finished_and_reports_failures(tmp_path):
    tmpl = None
    for i in range(2):
        tomo, truth = simulate_tomogram(
            20, template_shape=7, n_particles=1, noise_std=0.1, wedge=None, seed=10 + i,
            n_atoms=8, sigma=1.0, pixel_size=2.0,
        )  # fmt: skip
        write_mrc(tmp_path / f"tomo_{i}.mrc", tomo, 2.0)
        tmpl = truth["template"]
    write_mrc(tmp_path / "tmpl.mrc", tmpl, 2.0)
    (tmp_path / "tomo_9.mrc").write_bytes(b"truncated")
    runner = CliRunner()
    args = ["match3d", "batch", str(tmp_path / "tomo_*.mrc"), str(tmp_path / "tmpl.mrc"),
            "-o", str(tmp_path / "out"), "--angular-step", "60",
            "--interpolation-order", "1"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 1, r.output  # one corrupt input: reported, others done
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(summary["status"]) == ["done", "done", "failed"]
    assert "tomo_9.mrc" in summary.loc[2, "error"]
    assert MatchResult.read(tmp_path / "out" / "tomo_0").scores.shape == (20, 20, 20)
    (tmp_path / "tomo_9.mrc").unlink()
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "2 skipped" in r.output
