"""Top-level CLI: help, version, every job registered."""

from __future__ import annotations

from typer.testing import CliRunner

from corrscan import __version__
from corrscan.cli.main import app


def test_version_and_help():
    runner = CliRunner()
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0
    assert __version__ in res.output
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for name in ("demo", "match2d", "match3d", "likelihood", "contrast", "track"):
        assert name in res.output
