"""Preemption in the fair queue (cluster.gateway.flowcontrol.preemption): a tenant under its
share that would wait for a slot takes one back from a tenant over its share — the youngest
request that has not answered yet, once — and the one taken back waits again at the head of
its tenant's queue. The forwarder's side (abort, wait again, answer) is in
test_fair_sharing_http.py's preemption test."""

from __future__ import annotations

import asyncio

from cluster.config.auth import TenantConfig
from cluster.gateway.flowcontrol.fair_order import FairOrder
from cluster.gateway.flowcontrol.preemption import Grant as Held
from cluster.gateway.flowcontrol.preemption import Preemptible
from tests.unit.test_fair_queue import Client, Grant, Stack, settle


class Taken:
    """Registers each grant as preemptible; records which were taken back."""

    def __init__(self, s: Stack):
        self.s, self.taken, self.held = s, [], {}

    async def request(self, tenant: str, label: str, **kw) -> Grant:
        g = await self.s.request(tenant, label=label, **kw)
        self.held[label] = self.s.fair.preemptible("m", tenant, g.replica_id, lambda: self.taken.append(label))
        return g

    def preempted(self) -> float:
        return self.s.registry.get_sample_value("owc_fair_preemptions_total", {"model": "m", "tenant": "B"}) or 0.0


async def test_a_waiting_tenant_under_its_share_takes_back_the_youngest_slot():
    s = Stack(batch=2, headroom=1)  # B alone took both slots
    t = Taken(s)
    b0 = await t.request("B", "B0")
    b1 = await t.request("B", "B1")
    queued = asyncio.ensure_future(s.request("B", label="B2"))  # B's own backlog
    await settle()
    a = asyncio.ensure_future(s.request("A"))
    await settle()
    assert t.taken == ["B1"] and t.preempted() == 1.0  # the youngest, not B0
    assert not a.done()
    s.done(b1)  # the forwarder: B1's engine connection closed, its slot given back
    assert (await asyncio.wait_for(a, 1)).replica_id == "r0"
    again = asyncio.ensure_future(s.fair.slot("m", "B", s.eps, s.pick, Client().receive,  # B1 waits again ...
                                              give_back=lambda e: None, again=True))
    await settle()
    s.done(b0)
    await asyncio.wait_for(again, 1)
    assert not queued.done()  # ... ahead of B's backlog
    queued.cancel()


async def test_a_tenant_sent_to_a_busy_replica_takes_back_a_slot_there():
    s = Stack(batch=2, dispatch_margin=1)  # A goes to the engine's queue at once ...
    t = Taken(s)
    await t.request("B", "B0")
    await t.request("B", "B1")
    await asyncio.wait_for(s.request("A"), 1)
    assert t.taken == ["B1"]  # ... and a slot there is taken back for it


async def test_nothing_taken_back():
    # preemption off; a tenant alone; the waiting tenant itself over its share; a victim of a
    # higher class; a request that answered already (settled); a request taken back once
    cases = []
    for kw, who, prio in [({"preempt": False}, "A", 0), ({}, "B", 0), ({}, "A", 1)]:
        s = Stack(batch=2, tenants={"B": TenantConfig(priority=prio)}, **kw)
        t = Taken(s)
        await t.request("B", "B0")
        await t.request("B", "B1")
        waiting = asyncio.ensure_future(s.request(who))
        await settle()
        cases.append(t.taken)
        waiting.cancel()
    s = Stack(batch=2)
    t = Taken(s)
    await t.request("B", "B0")
    b1 = await t.request("B", "B1")
    s.fair.settled("m", t.held["B1"])
    s.fair.settled("m", t.held["B0"])
    waiting = asyncio.ensure_future(s.request("A"))
    await settle()
    cases.append(t.taken)
    waiting.cancel()
    assert cases == [[], [], [], []]
    assert b1.replica_id == "r0"


def test_victims_youngest_once_and_of_a_lower_class():
    p = Preemptible()
    gs = [Held("B", "r0", 1.0, lambda: None), Held("B", "r0", 3.0, lambda: None),
          Held("C", "r1", 5.0, lambda: None), Held("A", "r0", 4.0, lambda: None)]
    for g in gs:
        p.hold(g)
    over = {"B", "C"}.__contains__
    assert p.victim("r0", over, lambda t: True) is gs[1]  # A is not over its share
    assert p.victim(None, over, lambda t: True) is gs[2]  # any replica: the youngest anywhere
    assert p.victim(None, over, lambda t: t != "C") is gs[1]  # C's class is higher than the waiter's
    assert p.tenants == {"B": 2, "C": 1, "A": 1}  # per tenant, what the other gateway processes are told
    p.take_back(gs[1])
    assert gs[1].preempted and p.victim("r0", over, lambda t: True) is gs[0]
    p.drop(gs[1])  # the forwarder settles a request taken back too: counted once
    p.drop(gs[0])
    assert p.victim("r0", over, lambda t: True) is None
    assert p.tenants == {"C": 1, "A": 1}


def test_a_request_taken_back_goes_first_in_its_flow_and_is_charged_once():
    order = FairOrder()
    for i in range(3):
        order.push("B", f"B{i}")
    order.push("A", "A0")
    assert order.pop() == ("B", "B0")
    order.push("B", "B0", front=True)  # taken back: first of B's again, at the start tag it had (not charged
    # twice: charged again, B's next start tag would be 1 and A0's turn would come first)
    assert [order.pop() for _ in range(5)] == [("B", "B0"), ("A", "A0"), ("B", "B1"), ("B", "B2"), None]


async def test_requests_that_can_be_taken_back_may_use_the_headroom():
    # headroom 1 of 4 slots: B at its share (2) leaves the last one free while A is active when its
    # request is a stream (not revocable); a non-streamed one takes it (A would take it back);
    # with preemption off it does not.
    got = {}
    for preempt, revocable in [(True, False), (True, True), (False, True)]:
        s = Stack(batch=4, headroom=1, preempt=preempt)

        def b_request(s=s, revocable=revocable):
            return s.fair.slot("m", "B", s.eps, s.pick, Client().receive, give_back=lambda e: None,
                               revocable=revocable)
        await s.request("A")  # A active, holding 1
        for _ in range(2):
            await asyncio.wait_for(b_request(), 1)  # under its share
        third = asyncio.ensure_future(b_request())
        await settle()
        got[(preempt, revocable)] = third.done()
        third.cancel()
    assert got == {(True, False): False, (True, True): True, (False, True): False}


def test_order_head():
    order = FairOrder()
    assert order.head("A") is None
    order.push("A", 1)
    order.push("A", 2)
    order.push("A", 0, front=True)
    assert order.head("A") == 0


async def test_a_request_taken_back_before_its_send_began_gives_its_replica_back():
    # The youngest grant is the one most likely taken back before its engine call even started
    # (its task not run yet): the replica the fair queue gave it must still go back, else every
    # such preemption leaks one of the replica's slots for good.
    from cluster.discovery.sources import StaticEndpoints
    from cluster.gateway.context import Delivery, Job
    from cluster.gateway.flowcontrol.preemption import Preempted
    from cluster.gateway.forwarder import Forwarder
    from cluster.gateway.upstream.engine_client import EngineClient
    from cluster.routing.types import RequestInfo

    s = Stack(batch=2)

    class TakesBackAtOnce:  # the fair queue's side, taking the grant back the moment it is registered
        def preemptible(self, model, tenant, replica_id, abort):
            abort()
            return type("G", (), {"preempted": True})()

        def settled(self, model, grant):
            pass

        def released(self, model):
            pass

    fwd = Forwarder(routing=s.routing, endpoints=StaticEndpoints({"m": ["http://127.0.0.1:9"]}),
                    engine=EngineClient(connect_timeout_s=1), metrics=s.metrics, request_timeout_s=30, fair=TakesBackAtOnce())
    ep = s.eps[0]
    s.routing.acquire(ep.replica_id)  # what the fair queue's pick did
    job = Job(request_id="r", route="/v1/completions", model="m", tenant="B", data={}, body=b"{}", stream=False,
              headers={})
    try:
        await fwd._send(job, Client().receive, None, info=RequestInfo(model="m"), endpoints=s.eps, headers={},
                        delivery=Delivery(), on_answer=lambda: None, first=ep)
        raise AssertionError("not taken back")
    except Preempted:
        pass
    assert s.routing.in_flight(ep.replica_id) == 0


async def test_a_light_tenant_within_its_credit_takes_a_slot_back_above_its_plain_share():
    # B held 6 of 8 for 30 s, A 1 (cluster.gateway.flowcontrol.slot_usage). Then A holds 4 (its
    # share), B 4: A's fifth request, sent to the full replica, takes one of B's back; held to
    # the instant count A would be over its share and wait, taking nothing.
    for seconds, taken in ((30.0, 1), (0.0, 0)):
        s = Stack(batch=8, headroom=2, dispatch_margin=1, active_window_s=60)
        now = [0.0]
        s.fair._clock = lambda now=now: now[0]
        t = Taken(s)
        b = {f"B{i}": await t.request("B", f"B{i}") for i in range(6)}
        await asyncio.wait_for(s.request("A"), 1)
        now[0] = seconds
        for label in ("B5", "B4"):
            s.fair.settled("m", t.held[label])
            s.done(b[label])
        for _ in range(3):
            await asyncio.wait_for(s.request("A"), 1)
        fifth = asyncio.ensure_future(s.request("A"))
        await settle()
        assert (len(t.taken), fifth.done()) == (taken, bool(taken)), seconds
        assert all(label.startswith("B") for label in t.taken)
        fifth.cancel()


async def _burst_takes_back(**policy) -> list[str]:
    """B held 6 of 8 and A 1 for 30 s; then 6 more of A's requests arrive one after another.
    Each one taken back is given back at once (the forwarder closing its engine connection)."""
    s = Stack(batch=8, headroom=2, dispatch_margin=2, active_window_s=60, **policy)
    now = [0.0]
    s.fair._clock = lambda: now[0]
    t = Taken(s)
    b = {f"B{i}": await t.request("B", f"B{i}") for i in range(6)}
    await asyncio.wait_for(s.request("A"), 1)
    now[0] = 30.0
    waiting = []
    for _ in range(6):
        waiting.append(asyncio.ensure_future(s.request("A")))
        await settle()
        for label in t.taken:
            if label in b:
                s.done(b.pop(label))
        await settle()
    for w in waiting:
        w.cancel()
    return t.taken


async def test_a_light_tenants_burst_takes_back_slots_from_the_flood_below_its_share_now():
    # B held 6 on average, 2 over its share, out of A's unused 3: A's credit is 2, spent 3 times
    # over in a burst (6), and B is in debt for it: over its share while A is owed, even holding
    # less than its share now. Each of A's requests beyond the one free slot takes one
    # of B's back (all sent at one instant here): B goes from 6 to 1.
    assert len(await _burst_takes_back()) == 5
    # credit_burst 1: A's credit and B's debt 2 each: A takes back until it holds 6, B 2
    assert len(await _burst_takes_back(credit_burst=1)) == 4
    # no credit: held to the shares counted now, A takes back until both hold 4
    assert len(await _burst_takes_back(credit_window_s=0)) == 2


async def test_a_tenant_in_debt_is_kept_from_the_headroom_below_its_share_now():
    # B (6 of 8 on average for 30 s, A 1) holds 3 now, A 3, two slots free (the headroom). B is in
    # debt to A: its next request, which cannot be taken back (a stream), waits while only the
    # headroom is free, and goes once a slot beyond it frees. Without the debt in admission, a
    # flood below its share filled the freed slots and the dispatch margin, and the light tenant's
    # next burst waited in vLLM's queue again (docs/tenancy.md).
    s = Stack(batch=8, headroom=2, active_window_s=60)
    now = [0.0]
    s.fair._clock = lambda: now[0]
    b = [await s.request("B") for _ in range(6)]
    a = [await asyncio.wait_for(s.request("A"), 1)]
    now[0] = 30.0
    for _ in range(3):
        s.done(b.pop())
    a += [await asyncio.wait_for(s.request("A"), 1) for _ in range(2)]
    held = asyncio.ensure_future(s.request("B"))
    await settle()
    assert not held.done()
    s.done(a.pop())
    assert (await asyncio.wait_for(held, 1)).replica_id == "r0"
    s2 = Stack(batch=8, headroom=2, active_window_s=60, credit_window_s=0)  # no averages: under its share, it goes
    b = [await s2.request("B") for _ in range(3)]
    a = [await asyncio.wait_for(s2.request("A"), 1) for _ in range(3)]
    assert (await asyncio.wait_for(s2.request("B"), 1)).replica_id == "r0"
