"""Config base: YAML loading and clear errors."""

from __future__ import annotations

import pytest

from corrscan.core.config import Config
from corrscan.errors import ConfigError, FileFormatError


class _Example(Config):
    pixel_size: float
    n: int = 3


def test_yaml_roundtrip(tmp_path):
    p = tmp_path / "c.yaml"
    _Example(pixel_size=1.5).to_yaml(p)
    assert _Example.from_yaml(p) == _Example(pixel_size=1.5, n=3)


def test_unknown_field_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("pixel_size: 1.0\npixle_size: 2\n")
    with pytest.raises(ConfigError, match="pixle_size"):
        _Example.from_yaml(p)


def test_bad_type_and_yaml_and_missing(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("pixel_size: abc\n")
    with pytest.raises(ConfigError, match="pixel_size"):
        _Example.from_yaml(p)
    p.write_text("pixel_size: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        _Example.from_yaml(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        _Example.from_yaml(p)
    with pytest.raises(FileFormatError, match="not found"):
        _Example.from_yaml(tmp_path / "missing.yaml")
