"""The registry -> gateway process hand-off, run by each gateway replica: poll the
registry's snapshot every REGISTRY_POLL_S, rewrite the gateway process's endpoints file
when it changed, and (local mode) list the engines as Prometheus file-SD targets."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cluster.discovery.endpoints import Endpoint
from cluster.discovery.sources import write_endpoints_file
from cluster.discovery.timing import REGISTRY_POLL_S
from cluster.metrics.targets import remove_targets, write_targets
from cluster.periodic import Periodic

log = logging.getLogger(__name__)


def engine_groups(endpoints: Iterable[Endpoint]) -> list[dict]:
    """File-SD target groups: each model's engine servers, labelled with the model."""
    by_model: dict[str, list[str]] = {}
    for e in endpoints:
        by_model.setdefault(e.model, []).append(urlsplit(e.url).netloc)
    return [{"targets": sorted(t), "labels": {"model": m}} for m, t in sorted(by_model.items())]


class EndpointSync:
    """``registry`` is the registry deployment's handle (``snapshot.remote()``)."""

    def __init__(self, *, registry: Any, endpoints_file: str, sd_dir: Path | None, sd_name: str,
                 period_s: float = REGISTRY_POLL_S):
        self._registry = registry
        self.endpoints_file = endpoints_file
        self._sd_dir = sd_dir
        self._sd_name = f"engines-{sd_name}"
        self._last: list[Endpoint] | None = None
        # Registry restarting: the loop logs it and keeps the last endpoints.
        self._loop = Periodic(self.sync, period_s=period_s, what="registry poll", log=log)

    async def sync(self) -> None:
        endpoints = await self._registry.snapshot.remote()
        if endpoints != self._last:
            write_endpoints_file(self.endpoints_file, endpoints)
            if self._sd_dir is not None:
                write_targets(self._sd_dir, self._sd_name, engine_groups(endpoints))
            self._last = endpoints

    def start(self) -> None:
        self._loop.start()

    @property
    def running(self) -> bool:
        return self._loop.running

    async def stop(self) -> None:
        await self._loop.stop()
        if self._sd_dir is not None:
            remove_targets(self._sd_dir, self._sd_name)
