"""Where a rollout's state is kept and how operator commands reach the analysis (files).

The analysis (cluster.rollouts, in `owc serve`'s own process) writes each model's state
document here; every gateway process reads it to route by the candidate's weight and to
answer `GET /admin/v1/models/{model}/rollout`. An operator's promote/abort/pause/resume
arrives at some gateway process, which drops a command file; the analysis applies it on its
next tick and leaves an answer file the gateway process waits for. Files, not a Ray call:
the gateway process is no Ray worker, and a restarted analysis (or gateway) finds the
state where it left it.

The directory: $OWC_ROLLOUT_DIR (owc serve sets one of its own), else `rollouts/` under the
model cache. On Kubernetes (the chart) the same documents and commands live in a ConfigMap
instead (cluster.discovery.rollout_configmap; ``rollout_store`` picks)."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

DIR_ENV = "OWC_ROLLOUT_DIR"


def rollout_dir(model_cache_dir: str, environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(DIR_ENV):
        return Path(env[DIR_ENV]).expanduser()
    return Path(model_cache_dir).expanduser() / "rollouts"


def rollout_store(model_cache_dir: str, environ: dict[str, str] | None = None):
    """Where this process finds the rollout state: the ConfigMap named by
    $OWC_ROLLOUT_CONFIGMAP (``<namespace>/<name>``; the chart sets it on gateway pods, where
    `owc controller` runs the analysis), else the directory above (`owc serve`)."""
    from cluster.discovery.rollout_configmap import ENV, in_cluster

    env = os.environ if environ is None else environ
    if env.get(ENV):
        return in_cluster(env[ENV])
    return RolloutFiles(rollout_dir(model_cache_dir, env))


def _write(path: Path, doc: dict[str, Any]) -> None:
    """Atomically (a reader sees the old document or the new one, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class RolloutFiles:
    def __init__(self, root: Path):
        self.root = root

    def state_path(self, model: str) -> Path:
        return self.root / f"{quote(model, safe='')}.json"  # model names may hold / and :

    def read(self, model: str) -> dict[str, Any] | None:
        """The model's state document; None when no analysis wrote one (yet)."""
        return _read(self.state_path(model))

    def mtime(self, model: str) -> int | None:
        try:
            return os.stat(self.state_path(model)).st_mtime_ns
        except FileNotFoundError:
            return None

    def write(self, model: str, doc: dict[str, Any]) -> None:
        _write(self.state_path(model), doc)

    def submit(self, model: str, action: str, who: str | None = None) -> str:
        """An operator's command for the analysis; returns its id (time-ordered)."""
        cid = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        _write(self.root / "commands" / f"{cid}.json", {"id": cid, "model": model, "action": action, "who": who})
        return cid

    def pending(self) -> list[dict[str, Any]]:
        """Commands not answered yet, oldest first."""
        folder = self.root / "commands"
        if not folder.is_dir():
            return []
        out = []
        for p in sorted(folder.glob("*.json")):
            doc = _read(p)
            if doc is not None and isinstance(doc.get("id"), str):
                out.append(doc)
        return out

    def answer(self, cid: str, result: dict[str, Any]) -> None:
        """The analysis's answer to a command; the command is gone once answered."""
        _write(self.root / "answers" / f"{cid}.json", result)
        (self.root / "commands" / f"{cid}.json").unlink(missing_ok=True)

    def take_answer(self, cid: str) -> dict[str, Any] | None:
        path = self.root / "answers" / f"{cid}.json"
        doc = _read(path)
        if doc is not None:
            path.unlink(missing_ok=True)
        return doc

    def withdraw(self, cid: str) -> None:
        """A command nobody answered in time: it must not apply later, unexpectedly."""
        (self.root / "commands" / f"{cid}.json").unlink(missing_ok=True)

    def announce(self, metrics_url: str) -> Path:
        """A gateway process's metrics URL, for the analysis to read (its own metrics, no Prometheus)."""
        path = self.root / "gateways" / f"{quote(metrics_url, safe='')}.json"
        _write(path, {"metrics_url": metrics_url, "pid": os.getpid()})
        return path

    def gateways(self) -> dict[str, Path]:
        """metrics URL -> its announcement, of every gateway process that announced one."""
        folder = self.root / "gateways"
        out = {}
        for p in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            doc = _read(p)
            if doc is not None and isinstance(doc.get("metrics_url"), str):
                out[doc["metrics_url"]] = p
        return out
