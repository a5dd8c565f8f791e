"""Where the gateway process learns each model's engine replicas, off the request path.

`StaticEndpoints` for a gateway in front of known URLs (benchmarks, external engines);
`FileEndpoints` for the gateway under Ray Serve, whose supervising replica polls the
replica registry and rewrites the file: the request path only reads the last snapshot.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Protocol

from cluster.discovery.endpoints import Endpoint
from cluster.discovery.timing import ENDPOINTS_FILE_POLL_S
from cluster.periodic import Periodic

log = logging.getLogger(__name__)


class EndpointSource(Protocol):
    """What the gateway process reads: each model's endpoints, from the last snapshot."""

    def endpoints(self, model: str) -> list[Endpoint]: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class StaticEndpoints:
    def __init__(self, urls: Mapping[str, Sequence[str]]):
        self._by_model = {
            m: [Endpoint(model=m, replica_id=f"{m}-{i}", url=u.rstrip("/")) for i, u in enumerate(us)]
            for m, us in urls.items()
        }

    def endpoints(self, model: str) -> list[Endpoint]:
        return self._by_model.get(model, [])

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class FileEndpoints:
    """Endpoints from a JSON file (`[{"model", "replica_id", "url", "draining", "version"}, ...]`) that a supervisor
    rewrites atomically; re-read when its mtime changes. The gateway process under Ray
    Serve gets its replicas this way from the Serve replica that supervises it."""

    def __init__(self, path: str, *, period_s: float = ENDPOINTS_FILE_POLL_S):
        self._path = path
        self._mtime: float | None = None
        self._by_model: dict[str, list[Endpoint]] = {}
        # A torn write is logged and retried next tick; the last snapshot stays.
        self._loop = Periodic(self.reload, period_s=period_s, what=f"reading endpoints file {path}", log=log,
                              first_after=True)

    def endpoints(self, model: str) -> list[Endpoint]:
        return self._by_model.get(model, [])

    def reload(self) -> None:
        try:
            mtime = os.stat(self._path).st_mtime_ns
        except FileNotFoundError:
            self._by_model = {}
            return
        if mtime == self._mtime:
            return
        with open(self._path) as f:
            rows = json.load(f)
        by_model: dict[str, list[Endpoint]] = {}
        for row in rows:
            ep = Endpoint(model=row["model"], replica_id=row["replica_id"], url=row["url"],
                          draining=bool(row.get("draining", False)), version=row.get("version", "stable"))
            by_model.setdefault(ep.model, []).append(ep)
        self._by_model = by_model
        self._mtime = mtime

    async def start(self) -> None:
        self.reload()
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()


def write_endpoints_file(path: str, endpoints: Sequence[Endpoint]) -> None:
    """Atomically replace the endpoints file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump([{"model": e.model, "replica_id": e.replica_id, "url": e.url, "draining": e.draining, "version": e.version}
                   for e in endpoints], f)
    os.replace(tmp, path)
