"""Prometheus file-SD lists for local mode. Each gateway replica lists its own private
metrics port and the engine replicas it routes to; the local runner lists Ray's metrics
export port. `owc monitor` (deploy/prometheus/prometheus.yml) scrapes
`gateway-*.json`, `engines-*.json` and `ray-*.json` from that directory."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from cluster.routing.endpoints import Endpoint


def file_sd_dir(configured: str | None) -> Path | None:
    return Path(configured).expanduser() if configured else None


def write_targets(directory: Path, name: str, groups: list[dict]) -> Path:
    """Atomically (re)write ``directory/name.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    tmp = directory / f".{name}.json.tmp"
    tmp.write_text(json.dumps(groups, sort_keys=True))
    os.replace(tmp, path)
    return path


def remove_targets(directory: Path, name: str) -> None:
    (directory / f"{name}.json").unlink(missing_ok=True)


def engine_groups(endpoints: Iterable[Endpoint]) -> list[dict]:
    by_model: dict[str, list[str]] = {}
    for e in endpoints:
        by_model.setdefault(e.model, []).append(urlsplit(e.url).netloc)
    return [{"targets": sorted(t), "labels": {"model": m}} for m, t in sorted(by_model.items())]


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
