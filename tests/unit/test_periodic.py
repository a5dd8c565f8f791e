"""The one periodic background task every loop of owc runs on (cluster.periodic)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cluster.periodic import Periodic

log = logging.getLogger("test-periodic")


async def test_a_failing_tick_is_logged_and_the_loop_goes_on(caplog):
    calls = []

    def tick():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("torn file")

    p = Periodic(tick, period_s=0.01, what="reading x", log=log)
    with caplog.at_level(logging.WARNING, logger="test-periodic"):
        p.start()
        await asyncio.sleep(0.1)
        await p.stop()
    assert len(calls) >= 3
    assert "reading x failed: torn file" in caplog.text


@pytest.mark.parametrize("traceback", [False, True])
async def test_a_lasting_failure_is_logged_on_its_2nd_4th_8th_tick_and_its_recovery_once(caplog, traceback):
    """A store that stays down for 20 ticks: 1 + 4 lines (2, 4, 8, 16), not 20 tracebacks; a
    different failure is told in full; the recovery is told once."""
    calls = []

    def tick():
        calls.append(1)
        n = len(calls)
        if n <= 20:
            raise ConnectionError("store down")
        if n == 21:
            raise ValueError("torn")

    p = Periodic(tick, period_s=0.001, what="batch runner", log=log, traceback=traceback)
    with caplog.at_level(logging.WARNING, logger="test-periodic"):
        p.start()
        while len(calls) < 25:
            await asyncio.sleep(0.005)
        await p.stop()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["batch runner failed" + ("" if traceback else ": store down"),
                     *(f"batch runner still failing ({n} ticks): ConnectionError: store down" for n in (2, 4, 8, 16)),
                     "batch runner failed" + ("" if traceback else ": torn"),
                     "batch runner recovered after 21 failed ticks"]
    assert [r.exc_info is not None for r in caplog.records] == [traceback, *[False] * 4, traceback, False]


async def test_stop_waits_for_the_task_to_end():
    ended = asyncio.Event()

    async def tick():
        try:
            await asyncio.sleep(10)
        finally:
            ended.set()

    p = Periodic(tick, period_s=1, what="t", log=log)
    p.start()
    await asyncio.sleep(0.01)
    assert p.running
    await p.stop()
    assert ended.is_set() and not p.running
    await p.stop()  # a second stop is a no-op


@pytest.mark.parametrize("first_after, ticks_within_half_a_period", [(False, 1), (True, 0)])
async def test_the_first_tick_at_once_or_after_a_period(first_after, ticks_within_half_a_period):
    calls = []
    p = Periodic(lambda: calls.append(1), period_s=0.2, what="t", log=log, first_after=first_after)
    p.start()
    await asyncio.sleep(0.1)
    await p.stop()
    assert len(calls) == ticks_within_half_a_period


async def test_wake_runs_the_next_tick_now():
    calls = []
    p = Periodic(lambda: calls.append(1), period_s=30, what="t", log=log, first_after=True)
    p.start()
    await asyncio.sleep(0.01)
    p.wake()
    await asyncio.sleep(0.05)
    await p.stop()
    assert calls == [1]


async def test_a_wake_during_a_tick_runs_the_next_one_at_once_and_once():
    calls = []

    async def tick() -> None:
        calls.append(1)
        if len(calls) == 1:
            p.wake()  # before its sleep began: that sleep is skipped, the one after is whole
            p.wake()

    p = Periodic(tick, period_s=30, what="t", log=log)
    p.start()
    await asyncio.sleep(0.05)
    await p.stop()
    assert calls == [1, 1]


@pytest.mark.parametrize("fixed_rate, at_most", [(True, 6), (False, 4)])
async def test_fixed_rate_counts_the_period_from_each_ticks_start(fixed_rate, at_most):
    """A tick that takes half the period: at a fixed rate ~one tick per period, otherwise
    one per 1.5 periods."""
    calls = []

    async def tick():
        calls.append(1)
        await asyncio.sleep(0.05)

    p = Periodic(tick, period_s=0.1, what="t", log=log, fixed_rate=fixed_rate)
    p.start()
    await asyncio.sleep(0.55)  # fixed rate: ticks at 0, .1, ... .5; else at 0, .15, .3, .45
    await p.stop()
    assert (len(calls) >= 5) == fixed_rate and len(calls) <= at_most
