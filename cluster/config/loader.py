"""YAML -> OwcConfig, with errors that name the key path."""

from __future__ import annotations

import difflib
import types
from importlib import resources
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from cluster.config.schema import OwcConfig


class ConfigError(ValueError):
    """A config file that cannot be served; `problems` lists `path: message` lines."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def _path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


def _members(tp: Any) -> list[Any]:
    if get_origin(tp) in (Union, types.UnionType):
        return [m for a in get_args(tp) for m in _members(a)]
    return [tp]


def keys_at(loc: tuple[Any, ...]) -> tuple[str, ...]:
    """The keys the schema allows at ``loc`` (a mapping's path), () where it cannot tell."""
    tp: Any = OwcConfig
    for part in loc:
        for t in _members(tp):
            if isinstance(t, type) and issubclass(t, BaseModel) and part in t.model_fields:
                tp = t.model_fields[part].annotation
                break
            if get_origin(t) is dict:
                tp = get_args(t)[1]
                break
        else:
            return ()
    return tuple(f for t in _members(tp) if isinstance(t, type) and issubclass(t, BaseModel) for f in t.model_fields)


def _unknown_key(loc: tuple[Any, ...]) -> str:
    close = difflib.get_close_matches(str(loc[-1]), keys_at(loc[:-1]), n=1, cutoff=0.75)
    return f"unknown key (did you mean '{close[0]}'?)" if close else "unknown key"


def format_errors(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        msg = _unknown_key(e["loc"]) if e["type"] == "extra_forbidden" else e["msg"]
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
