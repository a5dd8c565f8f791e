"""The batch lines' pacer (cluster.gateway.flowcontrol.batch_pacer): windows of interactive
TTFTs against the baseline of windows without batch lines, as a table of window sequences."""

from __future__ import annotations

import pytest

from cluster.gateway.flowcontrol.batch_class import batch_admits
from cluster.gateway.flowcontrol.batch_pacer import BatchPacer
from cluster.gateway.flowcontrol.capacity import Capacity


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def pacer(clock: Clock, **kw) -> BatchPacer:
    return BatchPacer(max_lines=kw.pop("max_lines", 8), tolerance=0.2, window_s=2.0, min_samples=5, memory_s=60.0,
                      clock=clock, **kw)


def windows(p: BatchPacer, clock: Clock, rows: list[tuple[float | None, int]]) -> list[int]:
    """Each row one 2-s window: (every interactive TTFT in it, None: no interactive request;
    batch lines running in it). The limit read at the start of each window after the first."""
    seen, start = [], clock.t
    for k, (ttft, running) in enumerate(rows):
        clock.t = start + 2.0 * k
        seen.append(p.limit("m", running))
        for i in range(10 if ttft is not None else 0):
            clock.t = start + 2.0 * k + 0.1 * (i + 1)
            p.interactive_ttft("m", ttft)
        p.limit("m", running)
    clock.t = start + 2.0 * len(rows)
    seen.append(p.limit("m", 0))
    return seen


@pytest.mark.parametrize("rows, expected", [
    # one line until a window has shown whether interactive traffic comes; none came: every line it may
    ([(None, 8), (None, 8)], [1, 8, 8]),
    # traffic alone (no batch line ran): the baseline, and no growth (the limit was not reached); then
    # batch lines at the limit and within the tolerance: one more a window
    ([(0.10, 0), (0.11, 1), (0.11, 2), (0.12, 3)], [1, 1, 2, 3, 4]),
    # lines below the limit (the batch wanted fewer): the limit does not grow
    ([(0.10, 0), (0.10, 1), (0.10, 1), (0.10, 1)], [1, 1, 2, 2, 2]),
    # lines that slow the interactive TTFT beyond 1.2x the baseline halve until they do not
    ([(0.10, 0), (0.10, 1), (0.10, 2), (0.10, 3), (0.30, 4), (0.30, 2), (0.11, 1)], [1, 1, 2, 3, 4, 2, 1, 2]),
    # batch lines running from the first window (no baseline): the next window runs none (a probe)
    ([(0.30, 1), (0.10, 0), (0.30, 1)], [1, 0, 1, 0]),
    # a probe window in which lines were still running: the probe goes on
    ([(0.30, 1), (0.30, 1), (0.10, 0), (0.10, 1)], [1, 0, 0, 1, 2]),
    # traffic back after an idle window: one line at once (slow start), not the idle window's 8
    ([(None, 1), (0.10, 1), (0.10, 0), (0.10, 1)], [1, 8, 0, 1, 2]),
])
def test_windows(rows, expected):
    clock = Clock()
    assert windows(pacer(clock), clock, rows) == expected


def test_first_interactive_request_after_idle_cuts_to_one_line_at_once():
    clock = Clock()
    p = pacer(clock)
    windows(p, clock, [(None, 8)])
    assert p.limit("m", 8) == 8  # no interactive request in the last window
    p.interactive_ttft("m", 0.1)
    assert p.limit("m", 8) == 1  # within the window, before any comparison


def test_a_window_with_too_few_requests_runs_on_up_to_five_windows():
    clock = Clock()
    p = pacer(clock)
    windows(p, clock, [(0.10, 0)])  # baseline 0.10
    base_limit = p.limit("m", 1)
    for _ in range(3):
        p.interactive_ttft("m", 0.5)
    clock.t += 9.0  # four and a half windows long, three slow requests: not judged yet
    assert p.limit("m", 1) == base_limit
    clock.t += 1.5  # past five windows: judged on what it has
    assert p.limit("m", 1) == base_limit // 2


def test_the_baseline_is_the_median_quiet_window_not_a_lucky_one():
    clock = Clock()
    p = pacer(clock)
    windows(p, clock, [(0.05, 0), (0.10, 0), (0.10, 0)])
    assert p.baseline("m") == pytest.approx(0.10)
    windows(p, clock, [(0.11, 1)])  # within 1.2 x 0.10 (not within 1.2 x the lucky 0.05, which would halve it)
    assert p.limit("m", 0) == 2


def test_every_window_with_batch_lines_forces_a_probe_once_a_memory():
    clock = Clock()
    p = pacer(clock, max_lines=4)
    windows(p, clock, [(0.10, 0)])
    limits = []
    for _ in range(40):  # lines run whenever the limit lets them (and none in a probe)
        limits.append(p.limit("m", 0))
        limits[-1] and windows(p, clock, [(0.10, 1)]) or windows(p, clock, [(0.10, 0)])
    first = limits.index(0)
    assert 25 <= first <= 31, limits  # a memory (60 s, 30 windows) after the last window without lines
    assert limits[first + 1] > 0 and 0 not in limits[first + 1:first + 25]
    assert p.baseline("m") == pytest.approx(0.10)


def test_old_baselines_are_forgotten():
    clock = Clock()
    p = pacer(clock)
    windows(p, clock, [(0.05, 0)])
    clock.t += 61.0
    windows(p, clock, [(0.20, 0)])
    assert p.baseline("m") == pytest.approx(0.20)


def test_models_are_paced_apart():
    clock = Clock()
    p = pacer(clock)
    windows(p, clock, [(None, 0)])  # model m's window (nothing for a and b yet)
    p.limit("b", 0)
    for _ in range(5):
        p.interactive_ttft("a", 0.1)
    clock.t += 2.0
    assert p.limit("a", 0) == 1 and p.limit("b", 0) == 8  # a: traffic (one line until lines show more); b: none


def cap(free: int) -> Capacity:
    return Capacity(at_limit=frozenset(), busy=frozenset(), free=free, total=32, own=0, others=0, unbounded=False,
                    routable=1)


@pytest.mark.parametrize("here, paced, admitted", [(0, None, True), (2, 3, True), (3, 3, False), (0, 0, False)])
def test_batch_admits_keeps_to_the_paced_limit(here, paced, admitted):
    got = batch_admits(cap(20), headroom=2, interactive_waiting=False, batch_here=here, unknown_limit=2, paced=paced)
    assert (got is not None) is admitted


# -- the wiring: the gateway's accounting tells it, the batch class asks it -------------------------

def test_accounting_tells_the_pacer_interactive_ttfts_only():
    from prometheus_client import CollectorRegistry

    from cluster.gateway.context import Delivery
    from cluster.gateway.observability.accounting import Accounting, Settled
    from cluster.gateway.observability.metrics import GatewayMetrics

    class _Routing:
        def policy(self, model: str) -> str:
            return "p2c"

    told = []
    accounting = Accounting(metrics=GatewayMetrics(CollectorRegistry()), routing=_Routing(),
                            interactive_ttft=lambda model, s: told.append((model, s)))
    for batch in (None, ("batch_1", "line-1")):
        d = Delivery()
        d.ttft_s = 0.25
        accounting.settle(Settled("r", "/v1/chat/completions", 200, tenant="t", model="m", batch=batch), d)
    accounting.settle(Settled("r", "/v1/chat/completions", 400, tenant="t", model="m"), Delivery())  # no token
    assert told == [("m", 0.25)]


async def test_a_batch_line_waits_while_the_pacer_allows_none():
    import asyncio

    from tests.unit.test_fair_queue import Stack, settle

    clock = Clock()
    s = Stack(batch=8, headroom=1)
    s.fair.batch_pacer = p = pacer(clock, max_lines=4)
    windows(p, clock, [(0.10, 0)])  # the baseline; one line
    first = await asyncio.wait_for(s.fair.batch_slot("m", s.pick), 1)
    assert s.registry.get_sample_value("owc_batch_lines_allowed", {"model": "m"}) == 1
    windows(p, clock, [(0.50, 1), (0.50, 1)])  # the interactive TTFT five times the baseline: 1 -> 0
    line = asyncio.ensure_future(s.fair.batch_slot("m", s.pick))
    await asyncio.sleep(0.12)
    assert not line.done()  # 7 slots free, yet no line may start
    assert s.registry.get_sample_value("owc_batch_lines_allowed", {"model": "m"}) == 0
    windows(p, clock, [(0.10, 1), (0.10, 1)])  # back within the tolerance: one line more a window, 0 -> 2
    await asyncio.wait_for(line, 1)
    for ep in (first, line.result()):
        s.routing.release(ep.replica_id)
        s.fair.batch_finished("m")
    await settle()
