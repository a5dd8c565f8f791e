"""Engine stats scraped once per period for every gateway process, through a real redis-server
(cluster.gateway.upstream.stats_share, stats_poller): a follower applies the scraper's rounds
(stats, unreachable replicas, pushed as they land) and the engines see one scrape a round
however many processes there are; a scraper that dies is replaced within its lease; the store
down leaves every process scraping for itself; the rounds and the mode are in the metrics. Each
"process" is a StatsPoller with its own StatsStore over the same fake engines (httpx transport)."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prometheus_client import CollectorRegistry

from cluster.discovery.endpoints import Endpoint
from cluster.gateway.upstream.scrape_fetch import Unreachable
from cluster.gateway.upstream.stats_poller import FILTERED_METRICS, StatsPoller
from cluster.gateway.upstream.stats_share import FAILED, RedisStatsShare, StatsShareMetrics, decode, encode
from cluster.routing.stats import StatsStore
from cluster.routing.types import ReplicaStats

PERIOD = 0.1
TIMEOUT = 0.5  # of one scrape
LEASE = 2 * PERIOD + TIMEOUT  # as cluster.gateway.upstream.stats_share.build_stats_share sets it


class Engines:
    """Fake vLLM engines r0, r1: /metrics with settable gauges, /v1/models with settable adapters; hits counted."""

    def __init__(self):
        self.waiting = {"r0": 0.0, "r1": 0.0}
        self.adapters = {"r0": [], "r1": []}
        self.down: set[str] = set()
        self.slow: dict[str, float] = {}  # seconds a replica's /metrics takes
        self.plain: set[str] = set()  # replicas without vLLM's filtering /metrics/ (404 there)
        self.failing: set[str] = set()  # replicas whose /metrics/ answers 503
        self.hits = {"metrics": 0, "models": 0}
        self.reads: list[tuple[str, str]] = []  # (replica, path?query) of each metrics read
        self.transport = httpx.MockTransport(self.handle)
        self.eps = [Endpoint("m", r, f"http://{r}:8000") for r in self.waiting]

    async def handle(self, req: httpx.Request) -> httpx.Response:
        rid = req.url.host
        if rid in self.down:
            raise httpx.ConnectError("refused", request=req)
        if req.url.path in ("/metrics", "/metrics/"):
            self.reads.append((rid, req.url.raw_path.decode()))
            if req.url.path == "/metrics/" and rid in self.plain | self.failing:
                return httpx.Response(404 if rid in self.plain else 503)
            self.hits["metrics"] += 1
            await asyncio.sleep(self.slow.get(rid, 0))
            return httpx.Response(200, text=f"vllm:num_requests_waiting {self.waiting[rid]}\n"
                                  "vllm:num_requests_running 1.0\nvllm:kv_cache_usage_perc 0.5\n")
        self.hits["models"] += 1
        cards = [{"id": "m", "parent": None}] + [{"id": a, "parent": "m"} for a in self.adapters[rid]]
        return httpx.Response(200, json={"data": cards})


class HttpxFetch:
    """The poller's engine reads (scrape_fetch's get/aclose) through the fake engines' httpx transport."""

    def __init__(self, transport: httpx.AsyncBaseTransport):
        self._client = httpx.AsyncClient(timeout=TIMEOUT, transport=transport)

    async def get(self, base_url: str, path: str) -> tuple[int, bytes]:
        try:
            resp = await self._client.get(base_url + path)
        except httpx.TimeoutException:
            raise TimeoutError from None
        except httpx.TransportError as e:
            raise Unreachable(str(e)) from None
        return resp.status_code, resp.content

    async def aclose(self) -> None:
        await self._client.aclose()


class Process:
    """One gateway process's poller, store, metrics and share."""

    def __init__(self, engines: Engines, url: str | None):
        self.registry = CollectorRegistry()
        self.metrics = StatsShareMetrics(self.registry)
        self.share = url and RedisStatsShare(url, scope="t", period_s=PERIOD, lease_s=LEASE, timeout_s=0.5,
                                             metrics=self.metrics, retry_s=0.2)
        self.store = StatsStore(stale_after_s=1e9)
        self.scraped: list[str] = []
        self.poller = StatsPoller(endpoints=lambda: engines.eps, store=self.store, period_s=PERIOD, timeout_s=TIMEOUT,
                                  fetch=HttpxFetch(engines.transport), share=self.share or None, metrics=self.metrics)
        self.poller.on_scrape = self.scraped.append

    def waiting(self, rid: str) -> float | None:
        s = self.store.latest(rid)
        return s.waiting if s else None

    def sample(self, name: str, **labels) -> float | None:
        return self.registry.get_sample_value(name, labels)

    @property
    def mode(self) -> str:
        return next(m for m in ("local", "scraper", "follower") if self.sample("owc_routing_stats_mode", mode=m) == 1)

    async def start(self) -> None:
        if self.share:
            await self.share.start(self.poller.apply)

    async def close(self) -> None:
        await self.poller.stop()


async def until(cond, timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("o", [
    ReplicaStats(waiting=2, running=3, kv_usage=0.25, adapters=frozenset({"fr", "de"}), active_adapters=frozenset({"fr"}),
                 max_loras=2, resident_adapters=frozenset({"fr", "de"})),
    ReplicaStats(),
    FAILED,
])
def test_a_round_reads_back_as_it_was_scraped(o):
    import json
    assert decode(json.loads(json.dumps(encode({"r0": o})))) == {"r0": o}


async def test_a_follower_applies_the_scrapers_rounds_and_the_engines_see_one_scrape(redis_server):
    url, _ = redis_server
    engines = Engines()
    procs = [Process(engines, url) for _ in range(3)]
    for p in procs:
        await p.start()
    try:
        await asyncio.sleep(0.1)  # the followers' subscriptions
        engines.waiting["r0"] = 5.0
        for p in procs:
            await p.poller.poll_once()
        assert [p.mode for p in procs] == ["scraper", "follower", "follower"]
        assert engines.hits["metrics"] == 2  # one round, two replicas: not one per process
        assert [p.waiting("r0") for p in procs] == [5.0, 5.0, 5.0]
        assert sorted(procs[1].scraped) == ["r0", "r1"]  # the fair queue hears of it as of a scrape
        # The next round reaches the followers as it is published, without a poll of theirs.
        engines.waiting["r0"] = 7.0
        await procs[0].poller.poll_once()
        await until(lambda: procs[1].waiting("r0") == 7.0 and procs[2].waiting("r0") == 7.0)
        assert engines.hits["metrics"] == 4
        assert procs[1].sample("owc_routing_stats_rounds_total", source="shared") == 2
        assert procs[0].sample("owc_routing_stats_rounds_total", source="scraped") == 2
        assert procs[1].sample("owc_routing_stats_rounds_total", source="scraped") is None
        # An unreachable replica is unhealthy for the followers too.
        engines.down.add("r1")
        await procs[0].poller.poll_once()
        await until(lambda: not procs[2].store.healthy("r1", time.monotonic()))
    finally:
        for p in procs:
            await p.close()


async def test_a_slow_replica_does_not_hold_back_the_others_stats(redis_server):
    url, _ = redis_server
    engines = Engines()
    a, b = Process(engines, url), Process(engines, url)
    await a.start(), await b.start()
    try:
        await a.poller.poll_once()
        await b.poller.poll_once()
        engines.waiting.update(r0=2.0, r1=3.0)
        engines.slow["r1"] = 0.4  # a loaded engine, answering within the scrape timeout
        t0 = time.monotonic()
        round_ = asyncio.ensure_future(a.poller.poll_once())
        await until(lambda: a.waiting("r0") == 2.0 and b.waiting("r0") == 2.0)
        assert a.waiting("r1") == b.waiting("r1") == 0.0 and time.monotonic() - t0 < 0.3
        await round_
        await until(lambda: b.waiting("r1") == 3.0)  # the late replica follows in a round of its own
        assert b.sample("owc_routing_stats_rounds_total", source="shared") == 3  # counted as published
    finally:
        await a.close(), await b.close()


async def test_a_dead_scraper_is_replaced_within_its_lease(redis_server):
    url, _ = redis_server
    engines = Engines()
    a, b = Process(engines, url), Process(engines, url)
    await a.start(), await b.start()
    try:
        await a.poller.poll_once()
        await b.poller.poll_once()
        assert (a.mode, b.mode) == ("scraper", "follower")
        # a dies without a word: b polls each period and takes the lease once it has lapsed.
        a.share._listener.cancel()
        died = time.monotonic()
        while b.mode != "scraper":
            assert time.monotonic() - died < LEASE + 2 * PERIOD
            await asyncio.sleep(PERIOD)
            await b.poller.poll_once()
        engines.waiting["r1"] = 3.0
        await b.poller.poll_once()
        assert b.waiting("r1") == 3.0
    finally:
        await b.close()
        await a.poller._fetch.aclose()


async def test_a_scraper_that_stops_hands_its_lease_on_at_once(redis_server):
    url, _ = redis_server
    engines = Engines()
    a, b = Process(engines, url), Process(engines, url)
    await a.start(), await b.start()
    try:
        await a.poller.poll_once()
        await b.poller.poll_once()
        await a.close()
        await b.poller.poll_once()
        assert b.mode == "scraper"
    finally:
        await b.close()


async def test_without_the_store_every_process_scrapes_for_itself(redis_server):
    url, server = redis_server
    engines = Engines()
    a, b = Process(engines, url), Process(engines, url)
    await a.start(), await b.start()
    try:
        await a.poller.poll_once()
        await b.poller.poll_once()
        assert engines.hits["metrics"] == 2
        server.stop()  # the store goes away
        engines.waiting["r0"] = 4.0
        for p in (a, b):
            await p.poller.poll_once()
        assert (a.mode, b.mode) == ("local", "local")
        assert engines.hits["metrics"] == 6  # each process scraped both replicas
        assert a.waiting("r0") == b.waiting("r0") == 4.0
        assert b.sample("owc_routing_stats_store_errors_total") >= 1
        assert b.sample("owc_routing_stats_rounds_total", source="scraped") == 1
    finally:
        await a.close(), await b.close()


async def test_no_store_configured_scrapes_locally():
    engines = Engines()
    p = Process(engines, None)
    await p.poller.poll_once()
    assert p.mode == "local" and p.waiting("r0") == 0.0 and engines.hits["metrics"] == 2
    await p.close()


async def test_a_scrape_asks_for_the_routing_gauges_only_and_an_engine_without_the_filter_is_read_whole():
    engines = Engines()
    engines.plain.add("r1")
    engines.waiting.update(r0=3.0, r1=4.0)
    p = Process(engines, None)
    for _ in range(2):
        await p.poller.poll_once()
    assert p.waiting("r0") == 3.0 and p.waiting("r1") == 4.0
    assert [path for rid, path in engines.reads if rid == "r0"] == [FILTERED_METRICS] * 2
    assert [path for rid, path in engines.reads if rid == "r1"] == [FILTERED_METRICS, "/metrics", "/metrics"]
    # A failing engine (5xx) has no stats that round and is asked the filtered read again.
    engines.failing.add("r0")
    engines.waiting["r0"] = 9.0
    await p.poller.poll_once()
    assert p.waiting("r0") == 3.0
    engines.failing.clear()
    await p.poller.poll_once()
    assert p.waiting("r0") == 9.0
    assert [path for rid, path in engines.reads if rid == "r0"] == [FILTERED_METRICS] * 4
    names = parse_qs(urlsplit(FILTERED_METRICS).query)["name[]"]
    assert {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
            "vllm:lora_requests_info"} == set(names)
    await p.close()


async def test_a_followers_adapter_load_holds_and_the_scraper_rereads_it(redis_server):
    url, _ = redis_server
    engines = Engines()
    a, b = Process(engines, url), Process(engines, url)
    await a.start(), await b.start()
    try:
        await a.poller.poll_once()
        await b.poller.poll_once()
        models = engines.hits["models"]
        engines.adapters["r0"] = ["fr"]
        b.poller.adapter_changed("r0", "fr", True)  # b's admin API loaded it
        await asyncio.sleep(0.05)  # the ask reaches the store
        await a.poller.poll_once()  # a round read before the ask: b keeps its own change
        await until(lambda: b.sample("owc_routing_stats_rounds_total", source="shared") == 2)
        assert b.store.latest("r0").adapters == {"fr"}
        await a.poller.poll_once()  # the round after re-reads r0's /v1/models (not a regular read: round 3 of 8)
        assert engines.hits["models"] == models + 1
        assert a.store.latest("r0").adapters == {"fr"}
    finally:
        await a.close(), await b.close()


@pytest.mark.parametrize(("gateway", "starts", "url"), [
    ({}, True, None),  # owc serve's defaults: two processes, no store: it starts a redis-server (fair_sharing.store_url)
    ({"replicas": 1}, False, None),  # one process: nobody to share with
    ({"store": {"url": "redis://10.0.0.5:6379/0"}}, False, "redis://10.0.0.5:6379/0"),  # the tenancy store's
    ({"fair_sharing": {"store_url": "redis://127.0.0.1:7/0"}}, False, "redis://127.0.0.1:7/0"),
    ({"fair_sharing": {"enabled": False}}, True, None),  # still shares the scrapes
    ({"routing_stats": {"share_across_gateways": False}, "store": {"url": "redis://10.0.0.5:6379/0"}}, False, None),
])
def test_where_the_shared_scrape_lives(gateway, starts, url):
    from cluster.config.loader import parse_config
    from cluster.gateway.upstream.stats_share import build_stats_share
    from cluster.local_stores import needs_stats_store

    cfg = parse_config({"models": {"m": {"source": "external"}}, "gateway": gateway})
    assert needs_stats_store(cfg) == starts
    got = build_stats_share(cfg, StatsShareMetrics(CollectorRegistry()))
    assert (got.url if got is not None else None) == url
