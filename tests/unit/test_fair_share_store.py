"""The fair queue's counts shared between gateway processes through a real redis-server
(cluster.gateway.flowcontrol.shared, cluster.tenancy.slot_share): a tenant active on one
process only is seen by the others, a process that dies holding slots has its counts expire,
and a stalled store leaves each process deciding alone (metric, no error). Each "process" is
a FairQueue with its own routing and stats over the same replica, as two gateway processes
in front of one engine are."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from cluster.config.loader import parse_config
from cluster.config.gateway import FairSharing
from cluster.config.routing import RoutingConfig
from cluster.discovery.endpoints import Endpoint
from cluster.gateway.app import build_shared_slots
from cluster.gateway.flowcontrol.fair_queue import FairQueue
from cluster.gateway.flowcontrol.shared import SharedSlots
from cluster.gateway.observability.metrics import GatewayMetrics
from cluster.routing.router import Routing
from cluster.routing.stats import StatsStore
from cluster.routing.types import ReplicaStats, RequestInfo
from cluster.tenancy.slot_share import FREED, RedisSlotShare, key_prefix
from tests.conftest import fake_engine_argv, gateway_argv, metric, server
from tests.unit.test_fair_queue import Client, Grant, settle

POLICY = {"headroom": 2, "dispatch_margin": 2}  # the defaults; saturated at 4 free slots or fewer
BATCH = 8


class Gateway:
    """One gateway process's fair queue in front of replica r0 (max_num_seqs 8)."""

    def __init__(self, shared: SharedSlots | None, metrics: GatewayMetrics | None = None, *,
                 clock=time.monotonic, **policy):
        self.stats = StatsStore(stale_after_s=1e9)
        self.routing = Routing.build({"m": RoutingConfig(policy="least_load").spec()}, stats=self.stats)
        self.eps = [Endpoint("m", "r0", "http://127.0.0.1:9000")]
        self.metrics = metrics or GatewayMetrics(CollectorRegistry())
        self.fair = FairQueue(policy=FairSharing(**{**POLICY, **policy}), tenants={}, max_num_seqs={"m": BATCH},
                              routing=self.routing, endpoints=lambda model: self.eps, metrics=self.metrics,
                              shared=shared, clock=clock)

    def pick(self, eps, exclude):
        ep = self.routing.choose(eps, RequestInfo(model="m"), exclude)
        self.routing.acquire(ep.replica_id)
        return ep

    async def request(self, tenant: str) -> Grant:
        ep = await self.fair.slot("m", tenant, self.eps, self.pick, Client().receive,
                                  give_back=lambda e: self.routing.release(e.replica_id))
        return Grant(ep.replica_id, tenant)

    def scrape(self, running: int, waiting: int = 0) -> None:
        """The engine's counts as this process's last scrape showed them."""
        self.stats.update("r0", ReplicaStats(running=running, waiting=waiting), 0.0)
        self.fair.scraped("r0")


def shared(url: str, ttl_s: float = 2.0, clock=time.monotonic, notify: bool = True) -> SharedSlots:
    return SharedSlots(RedisSlotShare(url, ttl_s=ttl_s, timeout_s=0.5),
                       threshold=POLICY["headroom"] + POLICY["dispatch_margin"], clock=clock, notify=notify)


async def test_a_tenant_on_one_process_only_is_seen_by_the_others(redis_server):
    url, _ = redis_server
    g1, g2 = Gateway(shared(url)), Gateway(shared(url))
    try:
        b = [await g2.request("B") for _ in range(5)]  # B alone (on g2): 5 of 8, the last one with g2 saturated
        g1.scrape(running=5)  # g1 sees the engine saturated by g2's requests ...
        a = await asyncio.wait_for(g1.request("A"), 1)  # ... and A, which sends through g1 only, takes a slot
        held = asyncio.ensure_future(g2.request("B"))
        await asyncio.sleep(0.2)
        # g2 has never seen A, but the shared counts show it: B holds its share (4 of 8) and
        # more, and the 2 free slots are the headroom kept for A.
        assert not held.done()
        second_a = await asyncio.wait_for(g1.request("A"), 1)  # A's next request finds one free at once
        held.cancel()
        assert (a.replica_id, second_a.replica_id, len(b)) == ("r0", "r0", 5)
    finally:
        await g1.fair.close()
        await g2.fair.close()


async def test_without_the_shared_view_the_other_process_gives_the_headroom_away():
    # The same as above with no store: g2 never sees A and hands B the slots kept for A.
    g2 = Gateway(None)
    b = [await g2.request("B") for _ in range(6)]
    assert len(b) == 6
    await g2.fair.close()


async def test_a_light_tenants_credit_reads_the_floods_average_on_another_process(redis_server):
    # B held 6 of 8 through g2 for 30 s, A 1 through g1. A's burst on g1 to its share (4) and
    # one more goes at once: g2's published average of B (u: fields) shows B took A's unused
    # share. g1 alone has no average of B, and would hold A to its share: the headroom.
    url, _ = redis_server
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    g1 = Gateway(shared(url, clock=clock), clock=clock, active_window_s=60)
    g2 = Gateway(shared(url, clock=clock), clock=clock, active_window_s=60)
    try:
        b = [await asyncio.wait_for(g2.request("B"), 1) for _ in range(6)]
        a = [await asyncio.wait_for(g1.request("A"), 1)]
        g1.scrape(running=7)
        await asyncio.sleep(0.1)  # g1, saturated, publishes A (active)
        now[0] = 30.0
        for grant in b[3:]:
            g2.routing.release(grant.replica_id)
            g2.fair.released("m")
            g2.fair.finished("m", "B")
        # g2's ticker still runs (started at 0 s) but the model is no longer hot at its clock: the
        # scrape, saturated again, keeps it going, and g2's counts and B's average are published.
        g2.scrape(running=4)
        await asyncio.sleep(0.2)
        a += [await asyncio.wait_for(g1.request("A"), 1) for _ in range(3)]  # 7 of 8: A 4, B 3
        fifth = await asyncio.wait_for(g1.request("A"), 1)
        assert fifth.replica_id == "r0" and g1.routing.in_flight("r0") == 5
        assert g1.fair._shared.share("m").view.usage["B"] > 5
    finally:
        await g1.fair.close()
        await g2.fair.close()


async def test_a_process_that_dies_holding_slots_has_its_counts_expire(redis_server):
    url, _ = redis_server
    g1, g2 = Gateway(shared(url, ttl_s=1.0)), Gateway(shared(url, ttl_s=1.0))
    try:
        for _ in range(BATCH + POLICY["dispatch_margin"]):  # g1 fills the replica to its bound (batch + margin)
            await asyncio.wait_for(g1.request("B"), 1)
        g2.scrape(running=BATCH, waiting=2)
        held = asyncio.ensure_future(g2.request("C"))
        await asyncio.sleep(1.2)  # longer than the TTL: g1, alive, keeps its counts fresh
        assert not held.done()
        await g1.fair.close()  # g1 dies holding its 10 requests: it never releases them
        t0 = time.monotonic()
        # g2's scrape still shows the engine full; the shared counts, not the scrape, decide while
        # the model is saturated: g1's expire and C goes.
        assert (await asyncio.wait_for(held, 3)).replica_id == "r0"
        assert time.monotonic() - t0 <= 1.0 + 0.5
        assert await g2.fair._shared.peers.exchange("m", {}) == {}
    finally:
        await g1.fair.close()
        await g2.fair.close()


async def test_a_stalled_store_leaves_each_process_deciding_alone(redis_server):
    url, server = redis_server
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    cfg = parse_config({"models": {"m": {"source": "external"}}, "gateway": {"fair_sharing": {"store_url": url}}})
    g = Gateway(build_shared_slots(cfg, metrics), metrics)

    def sample(name: str) -> float:
        return registry.get_sample_value(name) or 0.0

    try:
        for _ in range(5):  # the fifth with the model saturated: one exchange
            await g.request("B")
        assert sample("owc_fair_share_store_up") == 1 and sample("owc_fair_share_exchanges_total") >= 1
        os.kill(server.proc.pid, signal.SIGSTOP)  # the store stalls: it accepts and never answers
        try:
            t0 = time.monotonic()
            await asyncio.wait_for(g.request("A"), 1)  # decided per process after the exchange's bound (50 ms)
            assert time.monotonic() - t0 < 0.5
            assert sample("owc_fair_share_store_up") == 0 and sample("owc_fair_share_store_errors_total") == 1
            errors = sample("owc_fair_share_store_errors_total")
            held = asyncio.ensure_future(g.request("B"))  # per process: B over its share, 2 free = the headroom
            await settle()
            assert not held.done()
            second_a = await asyncio.wait_for(g.request("A"), 0.2)  # no store call while it is down: at once
            assert second_a.replica_id == "r0" and sample("owc_fair_share_store_errors_total") == errors
            held.cancel()
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        await asyncio.sleep(1.1)  # the store is retried after a second
        await g.request("A")
        assert sample("owc_fair_share_store_up") == 1
    finally:
        await g.fair.close()


def test_two_gateway_processes_keep_the_headroom_for_a_tenant_on_one_of_them(tmp_path, redis_server):
    """Real gateway processes over HTTP (fake engine, 4 slots, headroom 1): B floods through
    gw2 only, A sends through gw1 only. The first slot B frees goes to A (B holds its share),
    not to B's backlog queued in gw2, which never saw A; without the shared counts gw2 hands it
    to B's next at once and A waits for a later one."""
    url, _ = redis_server
    path = tmp_path / "owc.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"fake": {"source": "external", "engine_kwargs": {"max_num_seqs": 4}}},
        "gateway": {"access_log": {"enabled": False}, "routing_stats": {"period_s": 0.05},
                    "fair_sharing": {"dispatch_margin": 0, "headroom": 1, "store_url": url}},
    }))
    env = {"OWC_API_KEYS": "sk-a=light,sk-b=flood"}
    with server(fake_engine_argv("fake", ttft_ms=5, itl_ms=100, max_num_seqs=4)) as engine, \
            server(gateway_argv(f"fake={engine.url}", config=str(path)), env=env) as gw1, \
            server(gateway_argv(f"fake={engine.url}", config=str(path)), env=env) as gw2:
        got = asyncio.run(first_tokens(gw1.url, gw2.url))
        later_b = sorted(t for n, t in got.items() if n.startswith("B"))[4:]  # the 2 that waited in gw2
        assert got["A"] < later_b[0], got  # without the shared counts: after one of them, ~1.8 s
        for gw in (gw1, gw2):
            assert metric(gw.metrics_url, "owc_fair_share_store_up") == 1
            assert metric(gw.metrics_url, "owc_fair_share_exchanges_total") >= 1


async def first_tokens(a_url: str, b_url: str) -> dict[str, float]:
    """B opens 6 streams through b_url (4 run, ending at ~1, 1.4, 1.8 and 2.2 s; 2 wait), then A
    one through a_url."""
    got: dict[str, float] = {}
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=60) as c:
        async def stream(name: str, url: str, key: str, tokens: int) -> None:
            body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens,
                    "stream": True}
            async with c.stream("POST", url + "/v1/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status_code == 200
                async for _ in r.aiter_bytes():
                    got.setdefault(name, time.monotonic() - t0)

        flood = []
        for i, tokens in enumerate([10, 14, 18, 22, 10, 10]):  # the running four end one after another
            flood.append(asyncio.create_task(stream(f"B{i}", b_url, "sk-b", tokens)))
            await asyncio.sleep(0.03)
        await asyncio.sleep(0.2)
        light = asyncio.create_task(stream("A", a_url, "sk-a", 2))
        await asyncio.gather(light, *flood)
    return got


@pytest.mark.parametrize(("gateway", "starts", "url"), [
    ({}, True, None),  # owc serve's defaults: two processes, no store: it starts a redis-server for them
    ({"replicas": 1}, False, None),  # one process: nobody to share with
    ({"store": {"url": "redis://10.0.0.5:6379/0"}}, False, "redis://10.0.0.5:6379/0"),  # the tenancy store's
    ({"fair_sharing": {"store_url": "redis://127.0.0.1:7/0"}}, False, "redis://127.0.0.1:7/0"),
    ({"fair_sharing": {"share_across_gateways": False}}, False, None),
    ({"fair_sharing": {"enabled": False}}, False, None),
])
def test_where_the_shared_counts_live(gateway, starts, url):
    from cluster.local_stores import needs_fair_share_store

    cfg = parse_config({"models": {"m": {"source": "external"}}, "gateway": gateway})
    assert needs_fair_share_store(cfg) == starts
    got = build_shared_slots(cfg, GatewayMetrics(CollectorRegistry()))
    assert (got.peers.url if got is not None else None) == url


async def test_a_burst_of_decisions_costs_two_exchanges_each_carrying_the_claims():
    class Peers:
        def __init__(self):
            self.sent: list[dict] = []

        async def exchange(self, model, mine, notify=False):
            self.sent.append(dict(mine))
            await asyncio.sleep(0.01)
            return {}

    peers = Peers()
    sh = SharedSlots(peers, threshold=4)
    mine = lambda: sh.mine("m", {}, [], {})  # noqa: E731
    await asyncio.gather(*(sh.exchange("m", mine, claim=f"t{i % 2}") for i in range(20)))
    # The first carries the first claim; the second, started once the first was back (its
    # caller decided), the other 19.
    assert peers.sent == [{"t:t0": 1, "r:*": 1}, {"t:t0": 9, "t:t1": 10, "r:*": 19}]


def test_owc_serve_starts_a_local_store_for_the_shared_counts(tmp_path):
    import redis

    from cluster.runner import LocalCluster

    cfg = parse_config({"models": {"m": {"source": "external"}}, "monitoring": {"file_sd_dir": str(tmp_path)},
                        "batch": {"store_dir": str(tmp_path / "batch")}})
    c = LocalCluster(cfg, temp_dir=str(tmp_path / "ray"))
    c._start_fair_share_store(warn=print)  # what start() does before Ray for owc serve's defaults (no store, 2 gateways)
    try:
        url = c.cfg.gateway.fair_sharing.store_url  # the gateway processes' config carries it
        assert url and redis.Redis.from_url(url).ping()
    finally:
        c._redis.stop()


async def test_the_exchange_returns_the_fewest_any_other_process_holds(redis_server):
    url, _ = redis_server
    p = [RedisSlotShare(url, timeout_s=0.5) for _ in range(3)]
    try:
        await p[0].exchange("least", {"t:B": 3, "v:B": 3, "r:r0": 3})
        await p[1].exchange("least", {"t:B": 1, "v:B": 1, "t:A": 1, "v:A": 1, "r:r0": 2})
        got = await p[2].exchange("least", {"t:B": 0})
        # sums of the others, and per tenant the fewest requests that can be taken back one of
        # them holds (0: one has none)
        assert got == {"t:B": 4, "v:B": 4, "l:v:B": 1, "t:A": 1, "v:A": 1, "l:v:A": 0, "r:r0": 5}
    finally:
        for x in p:
            await x.close()


async def revocable_b(g: Gateway, *, answered: bool = False):
    """One of B's requests on ``g`` that may take the headroom (non-streamed), held as the
    forwarder holds it: one that can be taken back until it answers (``answered``: already)."""
    ep = await g.fair.slot("m", "B", g.eps, g.pick, Client().receive, give_back=lambda e: None, revocable=True)
    grant = g.fair.preemptible("m", "B", ep.replica_id, lambda: None)
    if answered:
        g.fair.settled("m", grant)
    return ep


async def test_the_headroom_goes_to_a_revocable_request_where_the_fewest_are(redis_server):
    # Preemption: a request can only take back a slot of its own process, so a process holding
    # more of the flood's requests than another may not give it the headroom; the one holding
    # fewest may (non-streamed: revocable).
    url, _ = redis_server
    g1, g2 = Gateway(shared(url)), Gateway(shared(url))
    try:
        await g1.request("A")  # A active (on g1 only), holding 1
        for _ in range(5):  # B on g1: its share (4 of 8), then one more
            await asyncio.wait_for(revocable_b(g1), 1)
        g2.scrape(running=6)  # saturated as g2 sees it too
        on_g1 = asyncio.ensure_future(revocable_b(g1))
        await asyncio.sleep(0.3)
        assert not on_g1.done()  # g1 holds 5 of B's, g2 none: not g1's to give
        on_g2 = asyncio.ensure_future(revocable_b(g2))
        assert (await asyncio.wait_for(on_g2, 1)).replica_id == "r0"  # g2 holds fewest: the headroom
        on_g1.cancel()
    finally:
        await g1.fair.close()
        await g2.fair.close()


@pytest.mark.parametrize("on_g2, answered, g1_answered, granted", [
    (1, False, False, False),  # g2 holds 1 of B's to take back: fewer than the headroom
    (2, False, False, True),  # g2 holds 2 (the headroom): g1 may give it although it holds more
    (2, True, False, False),  # g2 holds 2 that answered already (streams past their first byte): none to take back
    (1, False, True, True),  # g1's 4 answered: it holds none to take back, fewer than g2's 1
])
async def test_the_headroom_goes_to_a_revocable_request_where_every_other_process_holds_headroom_to_take_back(
        redis_server, on_g2, answered, g1_answered, granted):
    # g1 holds more of the flood's requests than g2; the headroom is still g1's to give once g2
    # holds ``headroom`` (2) that can be taken back: a light tenant's request on either process
    # finds some to take back.
    url, _ = redis_server
    g1, g2 = Gateway(shared(url)), Gateway(shared(url))
    try:
        await g1.request("A")  # A active, holding 1
        for _ in range(4):  # B on g1: its share (4 of 8)
            await asyncio.wait_for(revocable_b(g1, answered=g1_answered), 1)
        g2.scrape(running=5)  # saturated as g2 sees it
        for _ in range(on_g2):  # B on g2: the one holding fewest may take the headroom
            await asyncio.wait_for(revocable_b(g2, answered=answered), 1)
        g1.scrape(running=5 + on_g2)
        on_g1 = asyncio.ensure_future(revocable_b(g1))  # 8 - 5 - on_g2 free, at most the headroom
        if granted:
            assert (await asyncio.wait_for(on_g1, 1)).replica_id == "r0"
        else:
            await asyncio.sleep(0.3)  # three polls of the others' counts
            assert not on_g1.done()
            on_g1.cancel()
    finally:
        await g1.fair.close()
        await g2.fair.close()


async def subscribed(url: str, model: str, n: int) -> None:
    """Until ``n`` processes listen for the model's release notices."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    try:
        for _ in range(200):
            if (await r.pubsub_numsub(key_prefix(model) + FREED))[0][1] >= n:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{n} listeners for {model}'s notices not there in 10 s")
    finally:
        await r.aclose()


@pytest.mark.parametrize("notify", [True, False])
async def test_a_release_on_one_process_reaches_the_requests_waiting_on_another_at_once(redis_server, monkeypatch,
                                                                                       notify):
    # B alone, through both processes, fills the replica (8 of 8, no margin); g1's next one waits.
    # g2 releases one of its slots: its notice makes g1 look at the counts at once and grant it.
    # Without notices g1 would see the room only at its next poll or refresh (here 30 s).
    monkeypatch.setattr("cluster.gateway.flowcontrol.shared.POLL_S", 30.0)
    monkeypatch.setattr("cluster.gateway.flowcontrol.shared.REFRESH_S", 30.0)
    url, _ = redis_server
    g1 = Gateway(shared(url, notify=notify), dispatch_margin=0)
    g2 = Gateway(shared(url, notify=notify), dispatch_margin=0)
    try:
        held = [await asyncio.wait_for(g2.request("B"), 1) for _ in range(6)]
        g1.scrape(running=6)
        for _ in range(2):
            await asyncio.wait_for(g1.request("B"), 1)
        waiting = asyncio.ensure_future(g1.request("B"))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # 8 of 8 on the shared counts
        if notify:
            await subscribed(url, "m", 2)  # each listens from its first exchange of the model
        g2.routing.release(held[0].replica_id)
        g2.fair.released("m")
        g2.fair.finished("m", "B")
        if notify:
            assert (await asyncio.wait_for(waiting, 1)).replica_id == "r0"
        else:
            await asyncio.sleep(1)
            assert not waiting.done()
            waiting.cancel()
    finally:
        await g1.fair.close()
        await g2.fair.close()


class NoticePeers:
    """A store that answers at once with no other process, and records the notices sent."""

    def __init__(self):
        self.notices = 0
        self.exchanges = 0

    async def exchange(self, model, mine, notify=False):
        self.exchanges += 1
        self.notices += notify
        return {}

    def listen(self, model, on_freed):
        pass

    async def close(self):
        pass


@pytest.mark.parametrize(("waiting_here", "notices"), [(False, 1), (True, 0)])
async def test_a_release_is_announced_only_where_no_grant_here_took_it(waiting_here, notices):
    peers = NoticePeers()
    g = Gateway(SharedSlots(peers, threshold=2), dispatch_margin=0)
    try:
        held = [await asyncio.wait_for(g.request("B"), 1) for _ in range(8)]
        waiting = asyncio.ensure_future(g.request("B")) if waiting_here else None
        await settle()
        before = peers.notices
        g.routing.release(held[0].replica_id)
        g.fair.released("m")
        g.fair.finished("m", "B")
        if waiting is not None:
            await asyncio.wait_for(waiting, 1)  # the freed slot went to the request waiting here
        for _ in range(5):
            await settle()
        assert peers.notices - before == notices
    finally:
        await g.fair.close()


async def test_release_notices_go_to_the_other_processes_only(redis_server):
    url, _ = redis_server
    p1, p2 = RedisSlotShare(url, timeout_s=0.5), RedisSlotShare(url, timeout_s=0.5)
    heard: list[str] = []
    try:
        p1.listen("m", heard.append)
        p1.listen("model/with:colons", heard.append)
        await subscribed(url, "model/with:colons", 1)
        await p1.exchange("m", {"t:B": 1}, notify=True)  # its own: not heard
        await p2.exchange("m", {"t:B": 2})  # no release: no notice
        await p2.exchange("other", {"t:B": 2}, notify=True)  # a model it does not listen for
        await p2.exchange("model/with:colons", {"t:B": 1}, notify=True)
        await asyncio.sleep(0.3)
        assert heard == ["model/with:colons"]
    finally:
        await p1.close()
        await p2.close()


async def test_a_store_that_denies_pubsub_loses_the_notices_not_the_exchange(redis_server, caplog, monkeypatch):
    # Redis 7's ACL users get no channels by default (acl-pubsub-default resetchannels): the
    # script's PUBLISH fails inside pcall and the counts are still exchanged; the subscription's
    # refusal is logged once, not at every retry.
    import redis

    monkeypatch.setattr("cluster.tenancy.slot_share.DENIED_RETRY_S", 0.3)  # asked again: refused again, not logged
    url, _ = redis_server
    redis.Redis.from_url(url).acl_setuser("gw", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all"],
                                          reset_channels=True)
    port = url.rsplit(":", 1)[1].split("/")[0]
    limited = RedisSlotShare(f"redis://gw:pw@127.0.0.1:{port}/0", timeout_s=0.5, retry_s=0.2)
    other = RedisSlotShare(url, timeout_s=0.5)
    try:
        limited.listen("m", lambda model: None)
        await other.exchange("m", {"t:A": 1})
        assert await limited.exchange("m", {"t:B": 2}, notify=True) == {"t:A": 1}
        assert limited.up
        await asyncio.sleep(1.5)  # several retry periods
        refusals = [r for r in caplog.records if "refuses release notices" in r.getMessage()]
        assert len(refusals) == 1 and not [r for r in caplog.records if "notices again" in r.getMessage()]
    finally:
        await limited.close()
        await other.close()
