"""Run-time adapters, durable: one JSON file, `owc-adapters.json` in the config's
model_cache_dir (the model-cache volume on Kubernetes, which gateways and engine replicas
share), or the path in OWC_ADAPTERS_FILE. The admin API writes it (atomically: a temporary
file renamed over it); every gateway process re-reads it when it changes and merges it
into its config's `adapters` maps, and engine replicas read it when they start. Adapters
declared in the config file are not in it: those change with the config."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from cluster.config.adapters import AdapterSpec
from cluster.config.schema import OwcConfig

FILE_ENV = "OWC_ADAPTERS_FILE"
FILE_NAME = "owc-adapters.json"


def adapters_file(config: OwcConfig | str, environ: dict[str, str] | None = None) -> Path:
    """The store's file for a config (or its model_cache_dir)."""
    env = os.environ if environ is None else environ
    if env.get(FILE_ENV):
        return Path(env[FILE_ENV]).expanduser()
    cache = config if isinstance(config, str) else config.model_cache_dir
    return Path(cache).expanduser() / FILE_NAME


async def load_recorded(url: str, model: str, cache_dir: str, engine_key: str | None) -> list[str]:
    """A replica starting: load the model's run-time adapters from the store on its engine
    (the declared ones came with the engine's flags); returns the problems."""
    import httpx

    problems = []
    headers = {"Authorization": f"Bearer {engine_key}"} if engine_key else {}
    async with httpx.AsyncClient(timeout=120, headers=headers) as client:
        for name, e in read_entries(adapters_file(cache_dir)).get(model, {}).items():
            try:
                r = await client.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": e["source"]})
                if r.status_code != 200 and "already" not in r.text:
                    problems.append(f"{name}: {r.status_code} {r.text[:200]}")
            except httpx.HTTPError as err:
                problems.append(f"{name}: {type(err).__name__}")
    return problems


def read_entries(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """{model: {adapter: {"source", "added_by", "added_at"}}}; empty when there is no file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    models = data.get("models", {}) if isinstance(data, dict) else {}
    return {m: {a: e for a, e in v.items() if isinstance(e, dict) and e.get("source")}
            for m, v in models.items() if isinstance(v, dict)}


class AdapterStore:
    """The run-time adapters of one config, kept in its `adapters` maps (so that admission,
    /v1/models and routing see them like declared ones) and in the file."""

    def __init__(self, config: OwcConfig, path: Path):
        self._config = config
        self.path = path
        self._mtime: int | None = -1  # the file's, when last read (None: there was none); -1: never read
        self._runtime: dict[str, set[str]] = {}  # model -> names this store put in its map
        self.refresh()

    def declared(self, model: str, name: str) -> bool:
        return name in self._config.models[model].adapters and name not in self._runtime.get(model, ())

    def runtime(self, model: str) -> set[str]:
        return set(self._runtime.get(model, ()))

    def refresh(self) -> bool:
        """Re-read the file when it changed; True when it did."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime and (mtime is not None or not self._runtime):
            return False  # unchanged (no file, and nothing from one to take out: nothing to read)
        self._mtime = mtime
        self._apply(read_entries(self.path))
        return True

    def _apply(self, entries: dict[str, dict[str, dict[str, Any]]]) -> None:
        for model, names in self._runtime.items():  # out, then back in when still listed
            for name in names:
                self._config.models[model].adapters.pop(name, None)
        self._runtime = {}
        for model, adapters in entries.items():
            if model not in self._config.models:
                continue
            m = self._config.models[model].adapters
            for name, e in adapters.items():
                if name not in m:  # one declared in the config keeps the config's source
                    m[name] = AdapterSpec(source=e["source"])
                    self._runtime.setdefault(model, set()).add(name)

    def put(self, model: str, name: str, source: str, who: str | None) -> None:
        entries = read_entries(self.path)
        entries.setdefault(model, {})[name] = {"source": source, "added_by": who, "added_at": int(time.time())}
        self._write(entries)

    def drop(self, model: str, name: str) -> None:
        entries = read_entries(self.path)
        entries.get(model, {}).pop(name, None)
        self._write({m: v for m, v in entries.items() if v})

    def _write(self, entries: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"models": entries}, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)
        self._mtime = None
        self.refresh()
