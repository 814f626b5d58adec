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


def _tiny(tmp_path, name="tiny"):
    """A very small search (48² micrograph, 16³ template, 8 orientations, batch 3)."""
    vol = example_template(16, n_atoms=60, seed=1)
    img, _ = simulate_micrograph(
        vol, shape=(48, 48), pixel_size=1.5, n_particles=1, seed=2, noise_std=0.5,
        defocus_u=8000.0,
    )  # fmt: skip
    write_mrc(tmp_path / f"{name}.mrc", img, 1.5)
    write_mrc(tmp_path / "tpl16.mrc", vol, 1.5)
    cfg = {
        "micrograph_path": str(tmp_path / f"{name}.mrc"),
        "template_volume_path": str(tmp_path / "tpl16.mrc"),
        "optics_group": {"pixel_size": 1.5, "defocus_u": 8000.0, "defocus_v": 8000.0},
        "defocus_search_config": {"enabled": False},
        "orientation_search_config": {"psi_step": 90.0, "theta_step": 90.0},
        "computational_config": {"orientation_batch_size": 3},
        "output": {"bundle_path": str(tmp_path / f"{name}_bundle")},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, img, vol


def test_search_flags_reach_run_search2d(tmp_path, monkeypatch):
    """--workers/--scheduler/--resume are passed to the distributed driver; without them the
    in-process pipeline runs."""
    import corrscan.distributed.search2d as s2d

    conf, _, _ = _tiny(tmp_path)
    calls = []
    real = s2d.run_search2d

    def spy(cfg, **kw):
        calls.append(kw)
        return real(cfg, **{**kw, "workers": None, "scheduler": None})  # run in-process

    monkeypatch.setattr(s2d, "run_search2d", spy)
    r = runner.invoke(
        app, ["match2d", "search", str(conf), "--quiet", "--scheduler", "tcp://nowhere:1",
              "--no-resume"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert len(calls) == 1
    assert calls[0]["scheduler"] == "tcp://nowhere:1" and calls[0]["workers"] is None
    assert calls[0]["resume"] is False
    assert "chunks" in r.output and "wrote" in r.output
    r = runner.invoke(
        app, ["match2d", "search", str(conf), "--quiet", "--workers", "3", "--overwrite"]
    )
    assert r.exit_code == 0, r.output
    assert calls[1]["workers"] == 3 and calls[1]["resume"] is True
    assert calls[1]["overwrite"] is True
    r = runner.invoke(app, ["match2d", "search", str(conf), "--quiet", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert len(calls) == 2  # no flags: the in-process search, not the driver
    r = runner.invoke(app, ["match2d", "search", str(conf), "--workers", "0"])
    assert r.exit_code != 0  # at least one worker


def test_search_on_two_workers_equals_in_process(tmp_path):
    """One real LocalCluster run: the bundle equals the in-process search bit for bit, and
    an existing bundle is refused before any work."""
    import torch

    from corrscan.match2d import MatchTemplateConfig, MatchTemplateResult, match_template

    conf, img, vol = _tiny(tmp_path)
    r = runner.invoke(app, ["match2d", "search", str(conf), "--quiet", "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "2 workers" in r.output
    cfg = MatchTemplateConfig.from_yaml(conf)
    got = MatchTemplateResult.load(cfg.output.bundle_path)
    ref = match_template(
        img, vol, optics=cfg.optics_group, defocus_search=cfg.defocus_search_config,
        orientation_search=cfg.orientation_search_config, compute=cfg.computational_config,
        progress=False,
    )  # fmt: skip
    for k in ref.maps:
        assert torch.equal(torch.as_tensor(np.asarray(got.maps[k])), ref.maps[k]), k
    assert not (tmp_path / "tiny_bundle.checkpoint.pt").exists()
    r = runner.invoke(app, ["match2d", "search", str(conf), "--workers", "2"])
    assert r.exit_code == 1 and "already exists" in r.output


def test_batch_skips_done_and_reports_failures(tmp_path):
    conf, _, _ = _tiny(tmp_path, "a")
    _tiny(tmp_path, "b")
    (tmp_path / "mics").mkdir()
    for n in ("a", "b"):
        (tmp_path / "mics" / f"{n}.mrc").write_bytes((tmp_path / f"{n}.mrc").read_bytes())
    (tmp_path / "mics" / "c.mrc").write_bytes((tmp_path / "a.mrc").read_bytes()[:1500])
    out = tmp_path / "out"
    args = ["match2d", "batch", str(tmp_path / "mics" / "*.mrc"), "--config", str(conf)]
    r = runner.invoke(app, [*args, "--out", str(out)])
    assert r.exit_code == 1  # one input failed; the others were searched
    assert "c.mrc" in r.output and "2 done" in r.output and "1 failed" in r.output
    assert "n_particles" in r.output  # the summary table
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["status"]) == ["done", "done", "failed"]
    assert (out / "a" / "metadata.json").is_file() and (out / "b" / "mip.mrc").is_file()
    r = runner.invoke(app, [*args, "--out", str(out)])
    assert "2 skipped" in r.output and "1 failed" in r.output
    r = runner.invoke(app, ["match2d", "batch", str(tmp_path / "none*.mrc"), "-c", str(conf),
                            "-o", str(out)])  # fmt: skip
    assert r.exit_code == 1 and "no input files" in r.output and "Traceback" not in r.output
