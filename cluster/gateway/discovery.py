"""Where the gateway learns each model's engine replicas, off the request path.

`StaticEndpoints` for a gateway in front of known URLs (benchmarks, external engines);
`PollingEndpoints` refreshes from the replica registry in a background task: the request
path only reads the last snapshot, and a failing registry keeps the last good one until it
is stale (then the model has no replicas: 503, not a hang).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from cluster.routing.endpoints import Endpoint

log = logging.getLogger(__name__)


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


class PollingEndpoints:
    def __init__(
        self,
        fetch: Callable[[], Awaitable[Sequence[Endpoint]]],
        *,
        period_s: float = 0.5,
        stale_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._fetch = fetch
        self._period_s = period_s
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._by_model: dict[str, list[Endpoint]] = {}
        self._fetched_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()

    def endpoints(self, model: str) -> list[Endpoint]:
        if self._fetched_at is None or self._clock() - self._fetched_at > self._stale_after_s:
            return []
        return self._by_model.get(model, [])

    async def refresh(self) -> None:
        eps = await self._fetch()
        by_model: dict[str, list[Endpoint]] = {}
        for ep in eps:
            by_model.setdefault(ep.model, []).append(ep)
        self._by_model = by_model
        self._fetched_at = self._clock()
        self._first.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the registry may be restarting: keep the last snapshot
                log.warning("endpoint refresh failed: %s", e)
            await asyncio.sleep(self._period_s)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


class FileEndpoints:
    """Endpoints from a JSON file (`[{"model", "replica_id", "url"}, ...]`) that a supervisor
    rewrites atomically; re-read when its mtime changes. The gateway process under Ray
    Serve gets its replicas this way from the Serve replica that supervises it."""

    def __init__(self, path: str, *, period_s: float = 0.2):
        self._path = path
        self._period_s = period_s
        self._mtime: float | None = None
        self._by_model: dict[str, list[Endpoint]] = {}
        self._task: asyncio.Task[None] | None = None

    def endpoints(self, model: str) -> list[Endpoint]:
        return self._by_model.get(model, [])

    def reload(self) -> None:
        import json
        import os

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
            ep = Endpoint(model=row["model"], replica_id=row["replica_id"], url=row["url"])
            by_model.setdefault(ep.model, []).append(ep)
        self._by_model = by_model
        self._mtime = mtime

    async def _loop(self) -> None:
        while True:
            try:
                self.reload()
            except (OSError, ValueError, KeyError) as e:  # a torn write is retried next tick
                log.warning("endpoints file %s unreadable: %s", self._path, e)
            await asyncio.sleep(self._period_s)

    async def start(self) -> None:
        self.reload()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


def write_endpoints_file(path: str, endpoints: Sequence[Endpoint]) -> None:
    """Atomically replace the endpoints file."""
    import json
    import os

    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump([{"model": e.model, "replica_id": e.replica_id, "url": e.url} for e in endpoints], f)
    os.replace(tmp, path)
