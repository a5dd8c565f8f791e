"""Fair sharing: the WFQ order as tables (weights, classes, leaving clients, idle tenants)
and the gateway's queue in front of saturated replicas (room, release, wait bound, queue
bounds, other gateways' load, capacity learned from scrapes)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from cluster.config.auth import TenantConfig
from cluster.config.gateway import FairSharing
from cluster.config.routing import RoutingConfig
from cluster.discovery.endpoints import Endpoint
from cluster.gateway.context import ClientGone
from cluster.gateway.errors import OpenAIError
from cluster.gateway.flowcontrol.fair_order import FairOrder
from cluster.gateway.flowcontrol.fair_queue import FairQueue, learn_capacity
from cluster.gateway.observability.metrics import GatewayMetrics
from cluster.routing.router import Routing
from cluster.routing.stats import StatsStore
from cluster.routing.types import ReplicaStats, RequestInfo


# -- the order ------------------------------------------------------------------------------

def run(ops: list[tuple]) -> str:
    """Ops: ("push", tenant, count[, weight[, priority]]), ("pop", count), ("remove", tenant, index).
    Returns the tenants popped, one letter each."""
    order, items, out, n = FairOrder(), {}, [], 0
    for op in ops:
        if op[0] == "push":
            _, tenant, count, *rest = op
            weight = rest[0] if rest else 1.0
            priority = rest[1] if len(rest) > 1 else 0
            for _ in range(count):
                n += 1
                items.setdefault(tenant, []).append(n)
                order.push(tenant, n, weight=weight, priority=priority)
        elif op[0] == "pop":
            for _ in range(op[1]):
                got = order.pop()
                out.append(got[0] if got else "-")
        elif op[0] == "remove":
            assert order.remove(op[1], items[op[1]][op[2]])
    return "".join(out)


ORDER_CASES = [
    # equal weights: a tenant with one request is not behind another's five
    ("light tenant first in line", [("push", "B", 5), ("push", "A", 1), ("pop", 6)], "BABBBB"),
    ("equal weights alternate", [("push", "A", 3), ("push", "B", 3), ("pop", 6)], "ABABAB"),
    # weight 2 gets two slots for each of weight 1's
    ("weights 2:1", [("push", "A", 6, 2.0), ("push", "B", 6, 1.0), ("pop", 9)], "ABAABAABA"),
    ("weights 1:3", [("push", "A", 4, 1.0), ("push", "B", 8, 3.0), ("pop", 8)], "ABBBABBB"),
    # a higher class goes first whatever the weights
    ("classes are strict", [("push", "A", 3, 10.0, 0), ("push", "B", 3, 1.0, 1), ("pop", 6)], "BBBAAA"),
    ("within a class, weights", [("push", "A", 2, 1.0, 1), ("push", "B", 4, 1.0, 1), ("push", "C", 2, 1.0, 0),
                                 ("pop", 8)], "ABABBBCC"),
    # a client that leaves is out of its own flow only
    ("leaving client", [("push", "A", 2), ("push", "B", 2), ("remove", "A", 0), ("pop", 4)], "ABB-"),
    ("whole flow leaves", [("push", "A", 1), ("push", "B", 2), ("remove", "A", 0), ("pop", 3)], "BB-"),
    # a tenant back from idle gets no credit for the time it sent nothing ...
    ("no credit for idling", [("push", "B", 6), ("pop", 4), ("push", "A", 3), ("pop", 5)], "BBBBABABA"),
    # ... and one that leaves and comes straight back keeps its place behind the others
    ("no jump by re-arriving", [("push", "A", 1), ("push", "B", 3), ("pop", 1), ("push", "A", 1), ("pop", 4)], "ABBAB"),
    ("empty", [("pop", 1)], "-"),
]


@pytest.mark.parametrize("ops,expected", [c[1:] for c in ORDER_CASES], ids=[c[0] for c in ORDER_CASES])
def test_fair_order(ops, expected):
    assert run(ops) == expected


def test_order_depths_and_pushout_victim():
    order = FairOrder()
    for i in range(3):
        order.push("B", f"b{i}")
    order.push("A", "a0")
    assert order.depths() == {"B": 3, "A": 1} and len(order) == 4
    assert order.newest_of_longest() == ("B", "b2")
    assert order.peek() == order.pop()
    assert not order.remove("A", "nope")
    with pytest.raises(ValueError):
        order.push("A", "x", weight=0)


# -- capacity learned from scrapes ------------------------------------------------------------

LEARN_CASES = [
    # known, running, waiting -> learned
    (None, 0, 0, None),  # idle: nothing learned
    (None, 3, 0, None),  # not saturated: still nothing
    (None, 8, 2, 8),  # a queue behind 8 running: 8 is what it runs
    (8, 6, 1, 8),  # a queue behind fewer (KV pressure, or a LoRA batch): unchanged
    (8, 8, 0, 9),  # runs all it was given with nothing waiting: it can take more
    (8, 5, 0, 8),  # below capacity: unchanged
]
# With a dispatch margin the gateway sends beyond what it thinks the batch is, so a larger batch
# shows by itself: no probe (an engine running exactly its 8 would otherwise be thought to run 9).
LEARN_WITH_MARGIN = [
    (8, 8, 0, 8),  # runs all it was given, nothing waiting: unchanged
    (8, 10, 0, 10),  # ran more than thought: that
    (None, 8, 2, 8),
    (8, 6, 1, 8),
]


@pytest.mark.parametrize("known,running,waiting,expected", LEARN_CASES)
def test_learn_capacity(known, running, waiting, expected):
    assert learn_capacity(known, ReplicaStats(running=running, waiting=waiting)) == expected


@pytest.mark.parametrize("known,running,waiting,expected", LEARN_WITH_MARGIN)
def test_learn_capacity_with_a_margin(known, running, waiting, expected):
    assert learn_capacity(known, ReplicaStats(running=running, waiting=waiting), probe=False) == expected


# -- the queue --------------------------------------------------------------------------------

class Client:
    """An ASGI receive that reports a disconnect once ``leave`` is called."""

    def __init__(self):
        self._gone = asyncio.Event()

    def leave(self):
        self._gone.set()

    async def receive(self):
        await self._gone.wait()
        return {"type": "http.disconnect"}


@dataclass
class Grant:
    replica_id: str
    tenant: str


class Stack:
    def __init__(self, *, batch: int | None = 1, replicas: int = 1, tenants=None, **policy):
        self.now = [0.0]
        self.store = StatsStore(stale_after_s=1e9)
        self.routing = Routing.build({"m": RoutingConfig(policy="least_load").spec()}, stats=self.store)
        self.eps = [Endpoint("m", f"r{i}", f"http://127.0.0.1:{9000 + i}") for i in range(replicas)]
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        policy = {"dispatch_margin": 0, "headroom": 0, **policy}
        self.fair = FairQueue(policy=FairSharing(**policy), tenants=tenants or {},
                              max_num_seqs={"m": batch}, routing=self.routing, endpoints=lambda model: self.eps,
                              metrics=self.metrics)
        self.order: list[str] = []

    def pick(self, eps, exclude):
        ep = self.routing.choose(eps, RequestInfo(model="m"), exclude)
        self.routing.acquire(ep.replica_id)
        return ep

    async def request(self, tenant: str, client: Client | None = None, label: str | None = None) -> Grant:
        ep = await self.fair.slot("m", tenant, self.eps, self.pick, (client or Client()).receive,
                                  give_back=lambda e: self.routing.release(e.replica_id))
        self.order.append(label or tenant)
        return Grant(ep.replica_id, tenant)

    def done(self, grant: Grant) -> None:
        self.routing.release(grant.replica_id)
        self.fair.released("m")
        self.fair.finished("m", grant.tenant)

    def depth(self, tenant: str) -> float:
        return self.registry.get_sample_value("owc_fair_queue_depth", {"model": "m", "tenant": tenant})


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


async def test_room_goes_straight_through_and_a_full_replica_holds():
    s = Stack(batch=2)
    a = await s.request("A")
    b = await s.request("A")
    assert s.routing.in_flight("r0") == 2
    third = asyncio.ensure_future(s.request("A"))
    await settle()
    assert not third.done() and s.depth("A") == 1
    s.done(a)
    assert (await third).replica_id == "r0" and s.depth("A") == 0
    assert s.routing.in_flight("r0") == 2
    s.done(b)


async def test_freed_slot_goes_to_the_light_tenant_not_the_flood():
    s = Stack(batch=1)
    running = await s.request("B")
    flood = [asyncio.ensure_future(s.request("B", label=f"B{i}")) for i in range(5)]
    await settle()
    light = asyncio.ensure_future(s.request("A"))
    await settle()
    s.done(running)
    first = await asyncio.wait_for(asyncio.shield(flood[0]), 1)  # B0 was first in line at the same virtual time
    s.done(first)
    await asyncio.wait_for(light, 1)
    assert s.order[1:3] == ["B0", "A"]
    for t in flood[1:]:
        t.cancel()


async def test_no_fair_queue_when_disabled():
    s = Stack(batch=1, enabled=False)
    eps = [await s.request("B") for _ in range(3)]
    assert s.routing.in_flight("r0") == 3 and all(e.replica_id == "r0" for e in eps)


async def test_pinned_requests_do_not_wait():
    s = Stack(batch=1)
    await s.request("B")
    ep = await asyncio.wait_for(s.fair.slot("m", "A", s.eps, s.pick, Client().receive, pinned=True,
                                            give_back=lambda e: None), 1)
    assert ep.replica_id == "r0"


async def test_a_client_that_leaves_is_dropped_at_once():
    s = Stack(batch=1)
    running = await s.request("B")
    c = Client()
    waiting = asyncio.ensure_future(s.request("A", c))
    after = asyncio.ensure_future(s.request("C"))
    await settle()
    assert s.depth("A") == 1
    c.leave()
    with pytest.raises(ClientGone):
        await waiting
    assert s.depth("A") == 0
    s.done(running)
    assert (await asyncio.wait_for(after, 1)).replica_id == "r0"
    assert s.order == ["B", "C"]


async def test_wait_bound_answers_queue_full():
    s = Stack(batch=1, max_wait_s=0.05)
    await s.request("B")
    with pytest.raises(OpenAIError) as e:
        await s.request("A")
    assert (e.value.status, e.value.code, e.value.headers.get("Retry-After")) == (429, "queue_full", "1")
    assert s.depth("A") == 0


async def test_one_tenants_backlog_never_refuses_another():
    s = Stack(batch=1, max_queued_per_tenant=2, max_queued=3)
    await s.request("B")
    flood = [asyncio.ensure_future(s.request("B")) for _ in range(2)]
    await settle()
    with pytest.raises(OpenAIError) as e:  # B's own bound
        await s.request("B")
    assert e.value.code == "queue_full"
    a = asyncio.ensure_future(s.request("A"))
    c = asyncio.ensure_future(s.request("C"))  # the queue is full (3): B's newest is pushed out for C
    await settle()
    assert not a.done() and not c.done()
    with pytest.raises(OpenAIError):
        await flood[1]
    assert s.depth("B") == 1 and s.depth("A") == 1 and s.depth("C") == 1
    for t in (flood[0], a, c):
        t.cancel()


async def test_other_gateways_load_counts_from_the_scrape():
    s = Stack(batch=4)
    # The engine runs 4 (all another gateway's): this gateway had none on it at that scrape.
    s.store.update("r0", ReplicaStats(running=4, waiting=0), 0.0)
    s.fair.scraped("r0")
    waiting = asyncio.ensure_future(s.request("A"))
    await settle()
    assert not waiting.done()
    # The next scrape shows two of them done: room for this gateway's request.
    s.store.update("r0", ReplicaStats(running=2, waiting=0), 0.0)
    s.fair.scraped("r0")
    assert (await asyncio.wait_for(waiting, 1)).replica_id == "r0"  # the ticker sees the room


async def test_capacity_is_learned_when_not_configured():
    s = Stack(batch=None)
    first = [await s.request("B") for _ in range(3)]  # nothing known: straight through
    s.store.update("r0", ReplicaStats(running=2, waiting=1), 0.0)  # it runs 2 and queues 1: capacity 2
    s.fair.scraped("r0")
    held = asyncio.ensure_future(s.request("A"))
    await settle()
    assert not held.done()
    s.done(first[0])
    s.done(first[1])
    assert (await asyncio.wait_for(held, 1)).replica_id == "r0"


async def test_weighted_tenants_share_freed_slots_by_weight():
    tenants = {"A": TenantConfig(weight=3), "B": TenantConfig(weight=1)}
    s = Stack(batch=1, tenants=tenants)
    running = await s.request("X")
    tasks = [asyncio.ensure_future(s.request(t)) for t in ["A"] * 6 + ["B"] * 6]
    await settle()
    for _ in range(8):
        s.done(running)
        running = await asyncio.wait_for(next(t for t in asyncio.as_completed(
            [t for t in tasks if not t.done()])), 1)
    assert s.order[1:9].count("A") == 6 and s.order[1:9].count("B") == 2
    for t in tasks:
        t.cancel()


async def test_spread_over_replicas_with_room():
    s = Stack(batch=1, replicas=2)
    a, b = await s.request("A"), await s.request("A")
    assert {a.replica_id, b.replica_id} == {"r0", "r1"}
    held = asyncio.ensure_future(s.request("A"))
    await settle()
    assert not held.done()
    s.done(b)
    assert (await asyncio.wait_for(held, 1)).replica_id == b.replica_id


async def test_headroom_keeps_a_slot_for_the_lighter_tenant():
    s = Stack(batch=4, headroom=1)
    flood = [await s.request("B") for _ in range(4)]  # alone, B has every slot
    queued = asyncio.ensure_future(s.request("B", label="B-queued"))
    await settle()
    a = asyncio.ensure_future(s.request("A"))
    await settle()
    assert not queued.done() and not a.done()
    s.done(flood.pop())
    first_a = await asyncio.wait_for(a, 1)  # under its share: the freed slot
    s.done(flood.pop())
    await settle()
    assert not queued.done()  # B holds 2 of 4, its share: the last free slot stays free
    second_a = await asyncio.wait_for(s.request("A"), 1)  # and A's next request takes it at once
    assert s.order == ["B"] * 4 + ["A", "A"]
    s.done(first_a)
    s.done(second_a)  # two free now, headroom 1: B's queued request goes
    await asyncio.wait_for(queued, 1)


async def _at_share_after(a_held: int, b_held: int, seconds: float, *, a_now: int = 4, b_now: int = 3,
                          **policy) -> asyncio.Future:
    """A held ``a_held`` slots of 8 and B ``b_held`` for ``seconds``; then A holds ``a_now`` (4:
    its share), B ``b_now``, one slot is free (under the headroom of 2), and A asks for one more."""
    s = Stack(batch=8, headroom=2, active_window_s=60, **policy)
    now = [0.0]
    s.fair._clock = lambda: now[0]
    b = [await s.request("B") for _ in range(b_held)]  # B first: alone, it may take them all
    a = [await asyncio.wait_for(s.request("A"), 1) for _ in range(a_held)]
    now[0] = seconds
    while len(b) > b_now:
        s.done(b.pop())
    while len(a) < a_now:
        a.append(await asyncio.wait_for(s.request("A"), 1))
    while len(b) < b_now:
        b.append(await asyncio.wait_for(s.request("B"), 1))
    fifth = asyncio.ensure_future(s.request("A"))
    await settle()
    return fifth


async def test_a_light_tenant_at_its_share_is_not_held_to_it_while_the_flood_took_more():
    # B held 6 of 8 for 30 s, A 1: A's burst to its share (4) and one more goes straight
    # through; held to the instant count, it waited in the queue for one of its own to end.
    fifth = await _at_share_after(1, 6, 30.0)
    assert fifth.done() and fifth.result().replica_id == "r0"
    fifth = await _at_share_after(1, 6, 30.0, credit_window_s=0)  # no credit: held to its share, as before
    assert not fifth.done()
    fifth.cancel()


async def test_a_light_tenant_spends_its_credit_in_a_burst():
    # Its average credit (2 slots beyond its share of 4) is spent credit_burst (3) times over at
    # once: a burst of 7 arriving together goes straight through, as it would with the engine alone.
    # (B held 6 of 8 and A 1 for 30 s: A's credit 2; then A holds 6, B 1, and asks for a seventh.)
    seventh = await _at_share_after(1, 6, 30.0, a_now=6, b_now=1)
    assert seventh.done() and seventh.result().replica_id == "r0"
    seventh = await _at_share_after(1, 6, 30.0, a_now=6, b_now=1, credit_burst=1)  # 6 - 2 = its share
    assert not seventh.done()
    seventh.cancel()


async def test_no_credit_where_both_used_their_shares_or_the_flood_has_just_begun():
    # and none for a tenant that has just arrived (A's first request at 30 s: B held 6 alone)
    for a_held, b_held, seconds in ((4, 4, 30.0), (1, 6, 0.0), (0, 6, 30.0)):
        fifth = await _at_share_after(a_held, b_held, seconds)
        assert not fifth.done()  # at its share: the free slot is the headroom
        fifth.cancel()


async def test_headroom_lapses_when_the_other_tenant_goes_quiet():
    clock = [0.0]
    s = Stack(batch=2, headroom=1, active_window_s=5)
    s.fair._clock = lambda: clock[0]
    a = await s.request("A")
    s.done(a)
    b1 = await s.request("B")
    clock[0] = 1.0
    held = asyncio.ensure_future(s.request("B"))  # A active 1 s ago: B at its share (1 of 2), 1 free = headroom
    await settle()
    assert not held.done()
    clock[0] = 10.0  # A quiet for longer than the window: B alone again
    assert (await asyncio.wait_for(held, 1)).replica_id == "r0"
    s.done(b1)


async def test_shares_are_of_the_slots_other_gateways_do_not_hold():
    # Behind a balancer this gateway sees half of each tenant's requests; the other gateway's
    # half is in the engine's counts. B's share here is of what that gateway does not hold.
    s = Stack(batch=8, headroom=2, dispatch_margin=2)
    a = await s.request("A")
    b = [await s.request("B") for _ in range(2)]
    s.store.update("r0", ReplicaStats(running=7, waiting=0), 0.0)  # 3 of this gateway's, 4 of the other's
    s.fair.scraped("r0")
    held = asyncio.ensure_future(s.request("B"))  # B holds 2 of the 4 slots left to it here: its share
    await settle()
    assert not held.done()
    second_a = await asyncio.wait_for(s.request("A"), 1)  # A is under its share: straight to the free slot
    # The other gateway's requests are over: all 8 slots are this gateway's again, B holds 2 of them.
    s.store.update("r0", ReplicaStats(running=4, waiting=0), 0.0)
    s.fair.scraped("r0")
    assert (await asyncio.wait_for(held, 1)).replica_id == "r0"
    for g in [a, second_a, *b]:
        s.done(g)


async def test_free_slots_beyond_the_headroom_are_shared_between_gateways():
    # Both gateways see the same free slots until their next scrape: an over-share tenant gets
    # only this gateway's part of those beyond the headroom (its part of the load), so that the
    # two together never take the headroom.
    s = Stack(batch=8, headroom=2, dispatch_margin=2)
    s.done(await s.request("A"))  # A is active
    b = [await s.request("B") for _ in range(3)]
    s.store.update("r0", ReplicaStats(running=5, waiting=0), 0.0)  # 3 of this gateway's, 2 of the other's
    s.fair.scraped("r0")
    held = asyncio.ensure_future(s.request("B"))  # 3 free, 1 beyond the headroom, this gateway's part 3/5 of it
    await settle()
    assert not held.done()
    s.store.update("r0", ReplicaStats(running=3, waiting=0), 0.0)  # the other gateway's are done: all 5 free are this one's
    s.fair.scraped("r0")
    assert (await asyncio.wait_for(held, 1)).replica_id == "r0"
    for g in b:
        s.done(g)


async def test_this_gateways_mix_of_tenants_stands_for_the_other_gateways():
    # B holds 2 of the 5 slots the other gateway leaves (under half of those), but with this
    # gateway's mix (B 2 of 3) taken for the other's 3 requests too, B holds 4 of 8: its share.
    s = Stack(batch=8, headroom=2, dispatch_margin=2)
    a = await s.request("A")
    b = [await s.request("B") for _ in range(2)]
    s.store.update("r0", ReplicaStats(running=6, waiting=0), 0.0)
    s.fair.scraped("r0")
    held = asyncio.ensure_future(s.request("B"))  # 2 free: the headroom
    await settle()
    assert not held.done()
    second_a = await asyncio.wait_for(s.request("A"), 1)  # A: 1 of 3 here, about 2 of 8 in all
    held.cancel()
    for g in [a, second_a, *b]:
        s.done(g)
