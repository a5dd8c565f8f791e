"""Batch lines as the lowest priority class (cluster.gateway.flowcontrol.batch_class), table-driven:
a line takes a slot only when no interactive request waits and the free running slots stay above
the headroom (at least one); only into a replica with a free running slot; a bounded few per
process while a replica's capacity is unknown; nothing while no replica is routable."""

from __future__ import annotations

import asyncio

import pytest

from cluster.gateway.flowcontrol.batch_class import batch_admits
from cluster.gateway.flowcontrol.capacity import Capacity

NONE = frozenset()
BUSY = frozenset({"r1"})


def cap(free: int, total: int = 8, *, busy=NONE, at_limit=NONE, unbounded=False, routable=2) -> Capacity:
    return Capacity(at_limit, busy, free, total, own=total - free, others=0, unbounded=unbounded, routable=routable)


CASES = [
    # (name, capacity, headroom, interactive waiting, batch lines here, expected)
    ("idle engine", cap(8), 2, False, 0, NONE),
    ("keep_free 0.5 of 8: four kept", cap(4), 2, False, 0, None, 0.5),
    ("keep_free 0.5 of 8: a fifth free", cap(5), 2, False, 0, NONE, 0.5),
    ("keep_free below the headroom: the headroom", cap(2), 2, False, 0, None, 0.1),
    ("free slots beyond the headroom", cap(3, busy=BUSY), 2, False, 5, BUSY),
    ("only the headroom left", cap(2), 2, False, 0, None),
    ("headroom 0 still keeps one slot", cap(1), 0, False, 0, None),
    ("headroom 0, two free", cap(2), 0, False, 0, NONE),
    ("an interactive request waits", cap(8), 2, True, 0, None),
    ("no replica routable", cap(0, 0, routable=0), 2, False, 0, None),
    ("capacity unknown: a few per process", cap(0, 0, unbounded=True), 2, False, 1, NONE),
    ("capacity unknown: the few are running", cap(0, 0, unbounded=True), 2, False, 2, None),
    ("saturated", cap(0, busy=frozenset({"r1", "r2"})), 2, False, 0, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_batch_admits(case):
    name, capacity, headroom, waiting, here, expected, *keep = case
    assert batch_admits(capacity, headroom=headroom, interactive_waiting=waiting, batch_here=here,
                        unknown_limit=2, keep_free=keep[0] if keep else 0.0) == expected


# -- through the fair queue (the mixin's wiring) ---------------------------------------------------

async def test_a_batch_line_waits_for_idle_room_and_never_takes_the_headroom():
    from tests.unit.test_fair_queue import Stack, settle

    s = Stack(batch=4, headroom=1)  # one replica of 4 slots; one kept free
    interactive = [await s.request("A") for _ in range(2)]
    line = await asyncio.wait_for(s.fair.batch_slot("m", s.pick), 1)  # 2 free, 1 kept: one batch line
    assert s.routing.in_flight("r0") == 3
    second = asyncio.ensure_future(s.fair.batch_slot("m", s.pick))
    await asyncio.sleep(0.12)
    assert not second.done()  # the last free slot is the headroom's
    arrival = await asyncio.wait_for(s.request("A"), 1)  # an interactive arrival takes it at once
    s.done(interactive[0])
    s.done(interactive[1])  # two slots free again, one kept: the waiting line goes
    await asyncio.wait_for(second, 1)
    s.routing.release(line.replica_id)
    s.fair.batch_finished("m")
    s.done(arrival)
    await settle()


async def test_a_freed_slot_goes_to_the_waiting_interactive_request_not_the_batch_line():
    from tests.unit.test_fair_queue import Stack

    s = Stack(batch=2, headroom=0)
    held = [await s.request("A"), await s.request("A")]
    waiting = asyncio.ensure_future(s.request("A", label="A-waiting"))
    line = asyncio.ensure_future(s.fair.batch_slot("m", s.pick))
    await asyncio.sleep(0.06)
    s.done(held[0])  # one slot frees: the interactive request gets it, the batch line does not
    got = await asyncio.wait_for(waiting, 1)
    await asyncio.sleep(0.12)
    assert not line.done() and s.fair._models["m"].batch == 0
    line.cancel()
    s.done(held[1])
    s.done(got)
