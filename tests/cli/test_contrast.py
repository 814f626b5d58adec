"""``corrscan contrast`` and ``corrscan view``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from corrscan.cli.main import app
from corrscan.contrast import compute_contrast_limits
from corrscan.synthetic.mixtures import tomogram_mixture

runner = CliRunner()


@pytest.fixture(scope="module")
def tomo_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    from corrscan.core.io.mrc import write_mrc

    vol, _ = tomogram_mixture((40, 64, 64), seed=8)
    path = tmp_path_factory.mktemp("cli") / "tomo.mrc"
    write_mrc(path, vol, 8.0)
    return path, vol


def test_contrast_is_a_command_and_prints_limits(tomo_file, tmp_path: Path) -> None:
    path, vol = tomo_file
    res = runner.invoke(app, ["contrast", str(path), "--plot", str(tmp_path / "h.png")])
    assert res.exit_code == 0, res.output
    lo, hi = compute_contrast_limits(vol)
    assert f"low={lo:.6g}" in res.output and f"high={hi:.6g}" in res.output
    assert "component(s) by BIC" in res.output
    png = (tmp_path / "h.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@pytest.mark.parametrize("method", ["cdf", "percentile"])
def test_contrast_json_and_options(tomo_file, method: str) -> None:
    path, vol = tomo_file
    res = runner.invoke(app, ["contrast", str(path), "-m", method, "--z-radius", "3", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["method"] == method and d["z_range"] == [17, 23]
    assert (d["low"], d["high"]) == tuple(compute_contrast_limits(vol, method, z_radius=3))


def test_contrast_errors(tomo_file, tmp_path: Path) -> None:
    path, _ = tomo_file
    res = runner.invoke(app, ["contrast", str(path), "-m", "kmeans"])
    assert res.exit_code != 0 and "kmeans" in res.output
    res = runner.invoke(app, ["contrast", str(tmp_path / "missing.mrc")])
    assert res.exit_code == 2 and "no such file" in res.output
    res = runner.invoke(app, ["contrast", str(path), "--z-radius", "wide"])
    assert res.exit_code != 0


def test_view_serves_then_stops(tomo_file, tmp_path: Path) -> None:
    path, vol = tomo_file
    picks = tmp_path / "picks.star"
    from corrscan.core.io.star import write_star

    write_star(
        picks,
        {
            "particles": pd.DataFrame(
                {"rlnCoordinateX": [30.0], "rlnCoordinateY": [20.0], "rlnCoordinateZ": [18.0]}
            )
        },
    )
    res = runner.invoke(app, ["view", str(path), "--picks", str(picks), "--timeout", "0.2"])
    assert res.exit_code == 0, res.output
    assert "viewer: http://127.0.0.1:" in res.output
    lo, hi = compute_contrast_limits(vol)
    assert f"low={lo:.6g} high={hi:.6g}" in res.output
    res = runner.invoke(app, ["view", str(path), "--limits", "-1,1", "--timeout", "0"])
    assert res.exit_code == 0 and "low=-1 high=1" in res.output
    res = runner.invoke(app, ["view", str(path), "--bind", "0.0.0.0", "--timeout", "0"])
    assert res.exit_code == 2 and "loopback" in res.output
