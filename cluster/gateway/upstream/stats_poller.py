"""Feeds routing with engine stats off the request path: every ``period_s`` each gateway
process scrapes every engine replica's own /metrics (vLLM's gauges) and, less often, its
/v1/models (loaded LoRA adapters). A replica that cannot be reached is marked unhealthy;
the next good scrape puts it back. One whose scrape times out is slow, not gone: its stats
go stale. One that answers without usable stats stays routable,
its stats go stale. Requests never wait on this loop; stale stats make routing
load-blind (cluster.routing.stats)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import httpx

from cluster.discovery.endpoints import Endpoint
from cluster.gateway.upstream.engine_client import engine_headers
from cluster.periodic import Periodic
from cluster.routing.stats import StatsStore, lora_adapters, parse_vllm_metrics

log = logging.getLogger(__name__)

ADAPTERS_EVERY = 8  # rounds between /v1/models reads


class StatsPoller:
    on_scrape: Callable[[str], None] | None = None  # a replica's stats just landed (cluster.gateway.flowcontrol.fair_queue)

    def __init__(
        self, *, endpoints: Callable[[], Iterable[Endpoint]], store: StatsStore, period_s: float, timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None, clock: Callable[[], float] = time.monotonic,
        engine_key: str | None = None,
    ):
        self._endpoints = endpoints
        self._store = store
        self._client = httpx.AsyncClient(timeout=timeout_s, transport=transport, headers=engine_headers(engine_key))
        self._clock = clock
        self._adapters: dict[str, frozenset[str]] = {}
        self._round = 0
        # Never let the loop die: routing turns load-blind instead.
        self._loop = Periodic(self.poll_once, period_s=period_s, what="stats poll", log=log, fixed_rate=True,
                              traceback=True, clock=clock)

    async def scrape(self, ep: Endpoint, with_adapters: bool) -> None:
        try:
            resp = await self._client.get(f"{ep.url}/metrics")
            resp.raise_for_status()
            if with_adapters or ep.replica_id not in self._adapters:
                models = await self._client.get(f"{ep.url}/v1/models")
                self._adapters[ep.replica_id] = lora_adapters(models.json()) if models.status_code == 200 else frozenset()
            stats = parse_vllm_metrics(resp.text, self._adapters.get(ep.replica_id, frozenset()))
        except httpx.TimeoutException as e:
            # Slow, not gone (a loaded engine, or this process's own loop): its stats age out
            # (stale after routing_stats.stale_after_s) instead of taking it out of routing.
            log.debug("stats scrape of %s timed out: %s", ep.url, e)
            return
        except httpx.TransportError as e:
            log.debug("stats scrape of %s failed: %s", ep.url, e)
            self._store.failed(ep.replica_id, self._clock())
            return
        except (httpx.HTTPError, ValueError) as e:
            log.debug("no stats from %s: %s", ep.url, e)
            return
        self._store.update(ep.replica_id, stats, self._clock())
        if self.on_scrape is not None:
            self.on_scrape(ep.replica_id)

    def adapter_changed(self, replica_id: str, adapter: str, loaded: bool) -> None:
        """An adapter the gateway loaded or unloaded: in the cached adapter list and the store."""
        if replica_id in self._adapters:
            have = self._adapters[replica_id]
            self._adapters[replica_id] = have | {adapter} if loaded else have - {adapter}
        self._store.adapter_changed(replica_id, adapter, loaded)

    async def poll_once(self) -> None:
        eps = {e.replica_id: e for e in self._endpoints()}
        self._store.forget(eps)
        for rid in [r for r in self._adapters if r not in eps]:
            del self._adapters[rid]
        with_adapters = self._round % ADAPTERS_EVERY == 0
        self._round += 1
        await asyncio.gather(*(self.scrape(e, with_adapters) for e in eps.values()))

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        await self._client.aclose()
