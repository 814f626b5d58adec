"""`corrscan match2d` commands end to end on a tiny simulated micrograph."""

from __future__ import annotations

import numpy as np
import pandas as pd
import yaml
from typer.testing import CliRunner

from corrscan.cli.main import app
from corrscan.core.io import write_mrc
from corrscan.synthetic.micrograph import example_template, simulate_micrograph

runner = CliRunner()


def _setup(tmp_path):
    vol = example_template(32, n_atoms=800, atom_sigma=0.7, seed=0)
    img, truth = simulate_micrograph(
        vol, shape=(128, 128), pixel_size=1.5, n_particles=2,
        orientations=[[0.0, 60.0, 90.0], [120.0, 30.0, 270.0]], defocus_u=8000.0,
        signal_scale=10.0, colored_noise_std=2.0, seed=2,
    )  # fmt: skip
    write_mrc(tmp_path / "mic.mrc", img, 1.5)
    write_mrc(tmp_path / "tpl.mrc", vol, 1.5)
    cfg = {
        "micrograph_path": str(tmp_path / "mic.mrc"),
        "template_volume_path": str(tmp_path / "tpl.mrc"),
        "optics_group": {"pixel_size": 1.5, "defocus_u": 8000.0, "defocus_v": 8000.0},
        "defocus_search_config": {"enabled": False},
        "orientation_search_config": {"psi_step": 30.0, "theta_step": 30.0},
        "preprocessing_filters": {"bandpass_filter": {"enabled": True, "low_freq_cutoff": 0.15}},
        "output": {"bundle_path": str(tmp_path / "bundle")},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return truth


def test_search_peaks_plot_refine(tmp_path):
    truth = _setup(tmp_path)
    r = runner.invoke(app, ["match2d", "search", str(tmp_path / "c.yaml"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "CCG/s" in r.output
    bundle = tmp_path / "bundle"
    parts = pd.read_csv(bundle / "particles.csv")
    assert (bundle / "particles.star").is_file() and (bundle / "mip.mrc").is_file()
    for _, t in truth.iterrows():
        d = np.hypot(parts["pos_y_img"] - t["y"], parts["pos_x_img"] - t["x"])
        assert d.min() <= 2

    r = runner.invoke(
        app,
        ["match2d", "peaks", str(bundle), "--method", "pvalue", "--star", str(tmp_path / "p.star")],
    )
    assert r.exit_code == 0, r.output
    assert (bundle / "particles_pvalue.csv").is_file() and (tmp_path / "p.star").is_file()

    r = runner.invoke(app, ["match2d", "plot", str(bundle), "--out", str(tmp_path / "plots")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "plots" / "maps.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "zscore_survival.png").stat().st_size > 1000

    (tmp_path / "r.yaml").write_text(
        yaml.safe_dump(
            {
                "orientation_refinement": {
                    "phi_step_coarse": 6.0, "theta_step_coarse": 6.0, "psi_step_coarse": 6.0,
                    "phi_step_fine": 3.0, "theta_step_fine": 3.0, "psi_step_fine": 3.0,
                },
                "defocus_refinement": {"enabled": False},
                "box_margin": 1,
            }
        )
    )  # fmt: skip
    r = runner.invoke(
        app,
        ["match2d", "refine", str(tmp_path / "c.yaml"), str(bundle), "--refine-config",
         str(tmp_path / "r.yaml"), "--star", str(tmp_path / "ref.star")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    ref = pd.read_csv(bundle / "refined.csv")
    assert "refined_scaled_mip" in ref.columns and len(ref) == len(parts)


def test_errors_are_clean(tmp_path):
    _setup(tmp_path)
    bad = yaml.safe_load((tmp_path / "c.yaml").read_text())
    bad["orientation_search_config"]["psi_stepp"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    r = runner.invoke(app, ["match2d", "search", str(tmp_path / "bad.yaml")])
    assert r.exit_code == 1
    assert "psi_stepp" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["match2d", "plot", str(tmp_path / "nowhere")])
    assert r.exit_code == 1


def test_example_config_loads(tmp_path):
    (tmp_path / "m.mrc").write_bytes(b"")
    (tmp_path / "t.mrc").write_bytes(b"")
    dest = tmp_path / "x.yaml"
    r = runner.invoke(
        app,
        ["match2d", "example-config", str(dest), "--micrograph", str(tmp_path / "m.mrc"),
         "--template", str(tmp_path / "t.mrc")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    from corrscan.match2d.config import MatchTemplateConfig

    cfg = MatchTemplateConfig.from_yaml(dest)
    assert cfg.orientation_search_config.psi_step == 1.5
