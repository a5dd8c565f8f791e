"""Loading LoRA adapters on engine replicas, from the gateway: vLLM's
/v1/load_lora_adapter and /v1/unload_lora_adapter (the engines run with
VLLM_ALLOW_RUNTIME_LORA_UPDATING, which owc sets), every call with the engine key.

- ``add``/``remove``: on every live replica of a model at once (the admin API), then the
  durable store (cluster.adapters.store). An add that fails on some replica is undone on
  the others and not recorded: an adapter is announced everywhere or nowhere.
- ``ensure``: on demand, before a request is sent to a replica that does not hold the
  adapter (a replica started later, or one that lost it): one load at a time per replica
  and adapter (single-flight: concurrent requests wait for the same load)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry, Counter

from cluster.adapters.store import AdapterStore
from cluster.config.adapters import lora_source
from cluster.config.schema import OwcConfig
from cluster.discovery.endpoints import Endpoint
from cluster.discovery.sources import EndpointSource
from cluster.gateway.upstream.engine_client import engine_headers
from cluster.gateway.errors import OpenAIError
from cluster.gateway.observability.metrics import GatewayMetrics
from cluster.periodic import Periodic
from cluster.routing.router import ADAPTER_FOUND, Routing
from cluster.routing.stats import lora_adapters

log = logging.getLogger(__name__)
Changed = Callable[[str, str, bool], None]  # (replica id, adapter, loaded now)


def record_adapter_requests(registry: CollectorRegistry, routing: Routing, config: OwcConfig) -> Counter:
    """``owc_adapter_requests_total{model, adapter, found}``: what each request naming a LoRA
    adapter found on the replica routing chose (cluster.routing.router.ADAPTER_FOUND), fed by
    routing's decisions; the share found ``active`` (or ``resident``) is LoRA routing's hit rate. The
    config's adapters start at 0 (run-time ones appear with their first request)."""
    counter = Counter(
        "owc_adapter_requests", "Requests naming a LoRA adapter, by model, adapter and what they found on the "
        "replica routing chose: active (running or queued there), resident (idle in one of its batch slots), "
        "registered (listed there, in no slot), loaded_on_demand (not listed: the gateway loads it first), "
        "unknown (the replica's stats are stale).",
        ["model", "adapter", "found"], registry=registry,
    )
    for model, m in config.models.items():
        for name in m.adapters:
            for found in ADAPTER_FOUND:
                counter.labels(model, name, found)
    routing.on_adapter_request = lambda model, adapter, found: counter.labels(model, adapter, found).inc()
    return counter


@dataclass(frozen=True)
class ReplicaResult:
    replica_id: str
    url: str
    ok: bool
    detail: str = ""
    rejected: bool = False  # the engine answered and refused the adapter itself (4xx: not found, invalid)

    def row(self) -> dict:
        return {"replica_id": self.replica_id, "url": self.url, "ok": self.ok, "detail": self.detail}


class AdapterLoader:
    def __init__(
        self, *, config: OwcConfig, endpoints: EndpointSource, store: AdapterStore, metrics: GatewayMetrics,
        engine_key: str | None = None, timeout_s: float = 120.0, transport: httpx.AsyncBaseTransport | None = None,
    ):
        self._config = config
        self._endpoints = endpoints
        self.store = store
        self._metrics = metrics
        self._client = httpx.AsyncClient(timeout=timeout_s, transport=transport, headers=engine_headers(engine_key))
        self._loaded: dict[str, set[str]] = {}  # replica id -> adapters loaded through this gateway
        self._flights: dict[tuple[str, str], asyncio.Future[ReplicaResult]] = {}
        self.on_change: Changed | None = None
        self.loads_started = 0  # engine load calls made (the single-flight test counts them)

    async def start(self, period_s: float = 1.0) -> None:
        """Follow the durable store: another gateway process's additions arrive within ``period_s``."""
        # A torn or unreadable file is logged; what is known stays.
        self._follow = Periodic(self.store.refresh, period_s=period_s, what=f"reading {self.store.path}", log=log,
                                first_after=True)
        self._follow.start()

    async def close(self) -> None:
        follow = getattr(self, "_follow", None)
        if follow is not None:
            await follow.stop()
        await self._client.aclose()

    def live(self, model: str) -> list[Endpoint]:
        return [e for e in self._endpoints.endpoints(model) if not e.draining]

    def _changed(self, rid: str, name: str, loaded: bool) -> None:
        (self._loaded.setdefault(rid, set()).add if loaded else self._loaded.setdefault(rid, set()).discard)(name)
        if self.on_change is not None:
            self.on_change(rid, name, loaded)

    async def load(self, model: str, ep: Endpoint, name: str, source: str, *, admin: bool = False) -> ReplicaResult:
        """One load on one replica; an adapter it has already counts as loaded. ``admin``: an
        admin's add, whose refusals (the engine's 4xx: a source not found, an invalid adapter)
        are answered to the admin and counted ``rejected``, not ``failed`` (no alert: nothing
        served failed); an on-demand load's refusal fails requests and counts ``failed``."""
        t0 = time.perf_counter()
        self.loads_started += 1
        rejected = False
        try:
            r = await self._client.post(f"{ep.url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": source})
            ok = r.status_code == 200 or (r.status_code == 400 and "already" in r.text)
            # vLLM's own refusal of the adapter (its error body; a 404 without it is a missing route: runtime
            # loading off), not the engine key refused (401/403) nor a busy engine (408/429): those fail
            rejected = not ok and r.status_code in (400, 404, 422) and '"error"' in r.text
            detail = "" if ok else f"engine answered {r.status_code}: {r.text[:300]}"
        except httpx.HTTPError as e:
            ok, detail = False, f"engine unreachable: {type(e).__name__}"
        self._metrics.adapter_loads.labels(model, "ok" if ok else "rejected" if rejected and admin else "failed").inc()
        self._metrics.adapter_load_seconds.labels(model).observe(time.perf_counter() - t0)
        if ok:
            self._changed(ep.replica_id, name, True)
        else:
            log.warning("loading adapter %s on %s failed: %s", name, ep.url, detail)
        return ReplicaResult(ep.replica_id, ep.url, ok, detail, rejected)

    async def unload(self, ep: Endpoint, name: str) -> ReplicaResult:
        """One unload; an adapter the replica does not have counts as unloaded."""
        try:
            r = await self._client.post(f"{ep.url}/v1/unload_lora_adapter", json={"lora_name": name})
            ok = r.status_code == 200 or r.status_code == 404 or (r.status_code == 400 and "not" in r.text)
            detail = "" if ok else f"engine answered {r.status_code}: {r.text[:300]}"
        except httpx.HTTPError as e:
            ok, detail = False, f"engine unreachable: {type(e).__name__}"
        if ok:
            self._changed(ep.replica_id, name, False)
        return ReplicaResult(ep.replica_id, ep.url, ok, detail)

    async def listed(self, ep: Endpoint) -> frozenset[str] | None:
        """The adapters a replica lists in its /v1/models; None when it does not answer."""
        try:
            r = await self._client.get(f"{ep.url}/v1/models")
            return lora_adapters(r.json()) if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    async def ensure(self, model: str, ep: Endpoint, name: str, held: frozenset[str] = frozenset()) -> None:
        """The adapter is on ``ep`` before a request for it goes there (``held``: what the
        routing stats say it has). Concurrent callers share one load; a failed load is a 502."""
        source = lora_source(self._config.models[model].adapters, name)  # an adapter's, or its candidate's
        if not source or name in held or name in self._loaded.get(ep.replica_id, ()):
            return  # an adapter without a source is the engine's own: nothing to load
        key = (ep.replica_id, name)
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = asyncio.ensure_future(self.load(model, ep, name, source))
            flight.add_done_callback(lambda _: self._flights.pop(key, None))
        result = await asyncio.shield(flight)
        if not result.ok:
            raise OpenAIError(502, f"adapter '{name}' could not be loaded on the chosen replica; retry",
                              type="server_error", code="adapter_load_failed")

    async def add(self, model: str, name: str, source: str, who: str | None) -> tuple[bool, list[ReplicaResult]]:
        """Load on every live replica; recorded (durable) only when all of them loaded it."""
        eps = self.live(model)
        results = list(await asyncio.gather(*(self.load(model, e, name, source, admin=True) for e in eps)))
        if not all(r.ok for r in results):
            done = [e for e, r in zip(eps, results) if r.ok]
            await asyncio.gather(*(self.unload(e, name) for e in done))  # announced everywhere or nowhere
            return False, results
        self.store.put(model, name, source, who)
        return True, results

    async def remove(self, model: str, name: str) -> tuple[bool, list[ReplicaResult]]:
        """Forgotten first (no new request selects it), then unloaded on every live replica."""
        self.store.drop(model, name)
        results = list(await asyncio.gather(*(self.unload(e, name) for e in self.live(model))))
        return all(r.ok for r in results), results

    async def state(self, model: str) -> list[dict]:
        """Each adapter of a model with its source, origin and per-replica state."""
        eps = self.live(model)
        held = await asyncio.gather(*(self.listed(e) for e in eps))
        runtime = self.store.runtime(model)
        out = []
        for name, spec in self._config.models[model].adapters.items():
            replicas = {e.replica_id: ("unreachable" if h is None else "loaded" if name in h else "not_loaded")
                        for e, h in zip(eps, held)}
            out.append({"name": name, "source": spec.source, "origin": "runtime" if name in runtime else "config",
                        "replicas": replicas})
        return out
