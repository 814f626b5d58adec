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
    formats = (("csv", "p.csv"), ("relion4", "p4.star"), ("relion5", "p5.star"))
    for fmt, name in (*formats, ("dynamo", "p.tbl")):
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


def test_template_from_atomic_model(tmp_path):
    import pytest

    from corrscan.core.io.mrc import read_mrc
    from corrscan.match3d.template import build_template

    atoms = [(0.0, 0.0, 0.0, "C"), (9.0, 1.0, 2.0, "N"), (4.0, 7.0, 1.0, "O"), (5.0, 2.0, 8.0, "S")]
    pdb = tmp_path / "model.pdb"
    pdb.write_text(
        "\n".join(
            f"ATOM  {i + 1:5d}  {el:<3s} ALA A{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00 20.00"
            f"          {el:>2s}"
            for i, (x, y, z, el) in enumerate(atoms)
        )
        + "\nEND\n"
    )
    out, mask = tmp_path / "tmpl.mrc", tmp_path / "mask.mrc"
    args = ["match3d", "template", str(pdb), str(out), "--pixel-size", "1.5", "--lowpass", "6"]
    runner = CliRunner()
    r = runner.invoke(app, [*args, "--invert", "--mask", str(mask)])
    assert r.exit_code == 0, r.output
    vol, vs = read_mrc(out)
    expect, expect_mask = build_template(pdb, 1.5, lowpass_angstrom=6.0, invert_contrast=True)
    assert vs == pytest.approx(1.5) and vol.shape == (12, 12, 12)  # 2 x 9 Å / 1.5 = 12
    np.testing.assert_allclose(vol, expect, atol=1e-6 * np.abs(expect).max())
    np.testing.assert_array_equal(read_mrc(mask)[0], expect_mask)
    # refuses to overwrite; --box, --scramble-phases and --seed reach build_template
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "exists" in r.output
    r = runner.invoke(
        app, [*args, "--overwrite", "--box", "16", "--scramble-phases", "--seed", "3"]
    )
    assert r.exit_code == 0, r.output
    expect, _ = build_template(pdb, 1.5, box=16, lowpass_angstrom=6.0, scramble_phases=True, seed=3)
    np.testing.assert_allclose(read_mrc(out)[0], expect, atol=1e-6 * np.abs(expect).max())
    # a missing model is a clean error
    r = runner.invoke(app, ["match3d", "template", str(tmp_path / "no.pdb"), str(out),
                            "--pixel-size", "1", "--overwrite"])  # fmt: skip
    assert r.exit_code == 2 and "not found" in r.output


def test_search_with_tilt_file_and_background_correction(tmp_path):
    """``--tilt-file`` fills the wedge from an IMOD .tlt file (the same filter as the angles
    given directly) and ``--background-correction`` records the correction."""
    rng = np.random.default_rng(3)
    write_mrc(tmp_path / "tomo.mrc", rng.normal(size=(20, 20, 20)).astype(np.float32), 4.0)
    write_mrc(tmp_path / "tmpl.mrc", rng.normal(size=(8, 8, 8)).astype(np.float32), 4.0)
    (tmp_path / "ts.tlt").write_text("\n".join(str(a) for a in range(-60, 61, 20)) + "\n")
    base = ["match3d", "search", str(tmp_path / "tomo.mrc"), str(tmp_path / "tmpl.mrc")]
    base += ["--n-rotations", "4", "--interpolation-order", "1"]
    runner = CliRunner()
    r = runner.invoke(
        app, [*base, "-o", str(tmp_path / "a"), "--tilt-file", str(tmp_path / "ts.tlt")]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app, [*base, "-o", str(tmp_path / "b"), "--tilt-angles", "-60,-40,-20,0,20,40,60"]
    )
    assert r.exit_code == 0, r.output
    a, b = MatchResult.read(tmp_path / "a"), MatchResult.read(tmp_path / "b")
    assert a.metadata["filters"]["tilt_angles"] == b.metadata["filters"]["tilt_angles"]
    np.testing.assert_array_equal(a.scores, b.scores)
    r = runner.invoke(
        app, [*base, "-o", str(tmp_path / "c"), "--background-correction", "phase-scrambling"]
    )
    assert r.exit_code == 0, r.output
    c = MatchResult.read(tmp_path / "c")
    assert c.metadata["background_correction"]["method"] == "phase-scrambling"
