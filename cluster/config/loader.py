"""YAML -> OwcConfig, with errors that name the key path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cluster.config.schema import OwcConfig


class ConfigError(ValueError):
    """A config file that cannot be served; `problems` lists `path: message` lines."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def _path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


def format_errors(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        out.append(f"{_path(e['loc'])}: {msg}")
    return out


def parse_config(data: Any, source: str = "<config>") -> OwcConfig:
    if not isinstance(data, dict):
        raise ConfigError(source, ["<root>: expected a mapping"])
    try:
        return OwcConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, format_errors(err)) from None


def load_config(path: str | Path | None = None) -> OwcConfig:
    """Load a YAML config; None loads the embedded default (local CPU demo)."""
    if path is None:
        text = resources.files("cluster.config").joinpath("default.yaml").read_text()
        source = "<embedded default>"
    else:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError(str(p), [f"cannot read: {e.strerror}"]) from None
        source = str(p)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(source, [f"invalid YAML: {e}"]) from None
    return parse_config(data, source)
