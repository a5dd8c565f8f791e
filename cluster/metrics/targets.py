"""Prometheus file-SD lists for local mode. Each gateway replica lists its own private
metrics port and the engine replicas it routes to; the local runner lists Ray's metrics
export port (the engines' groups come from cluster.discovery.handoff). `owc monitor` (deploy/prometheus/prometheus.yml) scrapes
`gateway-*.json`, `engines-*.json` and `ray-*.json` from that directory."""

from __future__ import annotations

import json
import os
from pathlib import Path


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


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
