"""``corrscan likelihood templates|images|run`` end to end on a tiny synthetic project."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from corrscan.cli.main import app
from tests.likelihood.test_workflow import make_project

runner = CliRunner()


def test_cli_templates_images_run(tmp_path):
    make_project(tmp_path)
    t, p, o = tmp_path / "templates", tmp_path / "particles", tmp_path / "out"
    r = runner.invoke(
        app,
        ["likelihood", "templates", str(tmp_path / "true.pdb"), "--output", str(t),
         "--n-pixels", "24", "--pixel-size", "3", "--viewing", "fibonacci", "--n-viewing", "20",
         "--atom-sigma", "2.5"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (t / "templates_fourier_true.pt").is_file() and (t / "parameters.yaml").is_file()
    r = runner.invoke(
        app,
        ["likelihood", "images", "--params", str(t / "parameters.yaml"), "--output", str(p),
         "--star", str(tmp_path / "particles.star"), "--mrc", str(tmp_path / "particles.mrcs"),
         "--batch-size", "16"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        ["likelihood", "run", "--templates", str(t), "--particles", str(p), "--output", str(o),
         "--max-displacement-pixels", "1", "--n-displacements-x", "3", "--n-displacements-y", "3",
         "--device", "cpu"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    ill = torch.load(
        o / "template0" / "log_likelihood" / "log_likelihood_integrated_fourier_stack_000001.pt"
    )
    assert ill.shape == (4,) and torch.isfinite(ill).all()
    # user errors are reported, not raised
    r = runner.invoke(
        app, ["likelihood", "templates", str(tmp_path / "true.pdb"), "--output", str(t)]
    )
    assert r.exit_code == 2 and "--n-pixels" in r.output
    r = runner.invoke(
        app, ["likelihood", "run", "--templates", str(p), "--particles", str(p), "--output", str(o)]
    )
    assert r.exit_code == 2 and "no template files" in r.output


def test_cli_run_on_dask_workers_matches_in_process(tmp_path):
    make_project(tmp_path)
    t, p = tmp_path / "templates", tmp_path / "particles"
    assert runner.invoke(
        app,
        ["likelihood", "templates", str(tmp_path / "true.pdb"), "--output", str(t),
         "--n-pixels", "24", "--pixel-size", "3", "--viewing", "fibonacci", "--n-viewing", "20",
         "--atom-sigma", "2.5"],
    ).exit_code == 0  # fmt: skip
    assert runner.invoke(
        app,
        ["likelihood", "images", "--params", str(t / "parameters.yaml"), "--output", str(p),
         "--star", str(tmp_path / "particles.star"), "--mrc", str(tmp_path / "particles.mrcs"),
         "--batch-size", "16"],
    ).exit_code == 0  # fmt: skip
    common = ["likelihood", "run", "--templates", str(t), "--particles", str(p),
              "--max-displacement-pixels", "1", "--n-displacements-x", "3",
              "--n-displacements-y", "3", "--device", "cpu"]  # fmt: skip
    r = runner.invoke(app, [*common, "--output", str(tmp_path / "local")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*common, "--output", str(tmp_path / "dask"), "--workers", "1"])
    assert r.exit_code == 0, r.output
    name = "template0/log_likelihood/log_likelihood_integrated_fourier_stack_000001.pt"
    local = torch.load(tmp_path / "local" / name)
    dask = torch.load(tmp_path / "dask" / name)
    torch.testing.assert_close(dask, local, rtol=1e-5, atol=1e-5)
    assert not list((tmp_path / "dask").rglob("*.checkpoint.pt"))  # removed when done
