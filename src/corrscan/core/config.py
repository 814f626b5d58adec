"""Configuration models: pydantic v2 models that load from YAML with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from corrscan.errors import ConfigError, FileFormatError


class Config(BaseModel):
    """Base of every corrscan configuration model.

    Unknown fields are rejected (a typo never passes silently) and assignments are validated.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<dict>") -> Self:
        """Validate ``data``; errors name the source and every offending field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = [f"invalid {cls.__name__} in {source}:"]
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"]) or "<root>"
                lines.append(f"  - {loc}: {err['msg']}")
            raise ConfigError("\n".join(lines)) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        """Load a YAML file; missing files, YAML syntax errors and bad fields raise clearly."""
        path = Path(path)
        if not path.is_file():
            raise FileFormatError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not a text (UTF-8) YAML file") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: top level must be a mapping of fields, got {type(data).__name__}"
            )
        return cls.from_dict(data, source=str(path))

    def to_yaml(self, path: str | Path) -> None:
        """Write the model as YAML (JSON-compatible values)."""
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))
