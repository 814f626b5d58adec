"""Configuration models of match2d: Leopard-EM defaults and semantics, YAML loading."""

from __future__ import annotations

import pytest
import torch

from corrscan.errors import ConfigError
from corrscan.match2d.config import (
    DefocusSearchConfig,
    MatchTemplateConfig,
    OrientationSearchConfig,
    PixelSizeSearchConfig,
)


def test_defocus_values_inclusive_with_zero():
    v = DefocusSearchConfig(defocus_min=-1200, defocus_max=1200, defocus_step=200).values()
    assert v.numel() == 13
    assert float(v[0]) == -1200 and float(v[-1]) == 1200
    # zero inserted when the grid misses it
    v = DefocusSearchConfig(defocus_min=-250, defocus_max=250, defocus_step=200).values()
    assert torch.equal(v, torch.tensor([-250.0, -50.0, 0.0, 150.0], dtype=torch.float64))
    v = DefocusSearchConfig(
        defocus_min=-250, defocus_max=250, defocus_step=200, skip_enforce_zero=True
    ).values()
    assert 0.0 not in v.tolist()
    assert DefocusSearchConfig(enabled=False).values().tolist() == [0.0]


def test_pixel_size_values():
    assert PixelSizeSearchConfig().values().tolist() == [0.0]
    v = PixelSizeSearchConfig(
        enabled=True, pixel_size_min=-0.02, pixel_size_max=0.02, pixel_size_step=0.01
    ).values()
    assert v.numel() == 5 and abs(float(v[2])) < 1e-12


def test_orientation_grid_symmetry_and_ranges():
    c1 = OrientationSearchConfig(psi_step=20, theta_step=20).angles()
    c2 = OrientationSearchConfig(psi_step=20, theta_step=20, symmetry="C2").angles()
    assert c1.shape[1] == 3
    assert c2[:, 0].max() < 180.0
    assert 0.4 < c2.shape[0] / c1.shape[0] < 0.6
    r = OrientationSearchConfig(
        psi_step=20, theta_step=20, theta_min=0, theta_max=40, symmetry=None
    ).angles()
    assert float(r[:, 1].max()) == 40.0  # inclusive upper bound (torch-so3)


def test_leopard_default_grid_size():
    # Leopard-EM's default (psi 1.5°, theta 2.5°, C1, uniform) has 1,584,480 orientations
    n_dirs = OrientationSearchConfig(psi_step=360.0, theta_step=2.5).angles().shape[0]
    assert n_dirs * 240 == 1_584_480


def test_yaml_roundtrip_and_errors(tmp_path):
    (tmp_path / "m.mrc").write_bytes(b"x")
    (tmp_path / "t.mrc").write_bytes(b"x")
    cfg = MatchTemplateConfig(
        micrograph_path=str(tmp_path / "m.mrc"),
        template_volume_path=str(tmp_path / "t.mrc"),
        optics_group={"pixel_size": 1.0, "defocus_u": 5000, "defocus_v": 4800},
    )
    p = tmp_path / "c.yaml"
    cfg.to_yaml(p)
    back = MatchTemplateConfig.from_yaml(p)
    assert back == cfg
    assert back.optics_group.mean_defocus == 4900
    p.write_text(p.read_text().replace("psi_step", "psi_stepp"))
    with pytest.raises(ConfigError, match="psi_stepp"):
        MatchTemplateConfig.from_yaml(p)
    with pytest.raises(ConfigError, match="micrograph_path"):
        MatchTemplateConfig.from_dict(
            {
                "micrograph_path": str(tmp_path / "missing.mrc"),
                "template_volume_path": str(tmp_path / "t.mrc"),
                "optics_group": {"pixel_size": 1.0, "defocus_u": 1, "defocus_v": 1},
            }
        )
