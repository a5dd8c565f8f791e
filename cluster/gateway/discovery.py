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
