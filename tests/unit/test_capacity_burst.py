"""Burst sizing and the batch budget in the capacity policy, table-driven: the replicas a
burst needs asked for at its start (one step, past max_step_up and the up cooldown), from
the arrival rate, its rise over a replica's start-up, the queue's growth and the queue;
nothing on missing data; the batch backlog scales only within its own budget."""

from __future__ import annotations

import pytest

from cluster.capacity.policy import PolicyState, Signals, burst_need, decide
from cluster.config.schema import Autoscaling, Replicas

# 10 req/s per replica at a full batch, sized at 0.8 of it: 8 req/s per replica; 60 s start-up
S = Autoscaling(enabled=True, target_ongoing_per_replica=100, target_queue_per_replica=50, ttft_slo_s=1.0,
                up_cooldown_s=30, down_cooldown_s=60, down_stabilization_s=120, max_step_up=2,
                replica_capacity_rps=10, replica_startup_s=60, target_utilization=0.8)
H = S.model_copy(update={"standing_headroom": 2})
BATCH = S.model_copy(update={"batch_max_replicas": 5})
OFF = S.model_copy(update={"replica_capacity_rps": None})
B = Replicas(min=1, max=20)
NOW = 10_000.0


def sig(arrival, rate, queue=0.0, **kw):
    return Signals(at=kw.pop("at", NOW), ongoing=kw.pop("ongoing", 10.0), queue=queue, request_rate=rate,
                   arrival_rate=arrival, **kw)


def seen(rate, queue=0.0, ago=5.0):
    return PolicyState(last_seen=(NOW - ago, rate, queue))


# a batch backlog with no interactive load; a scale-down window open long enough
ALONE = Signals(at=NOW, ongoing=0.0, queue=0.0, request_rate=0.0, arrival_rate=0.0, batch_queue=500)
LOW = PolicyState(low_since=NOW - 500, low_peak=1)


@pytest.mark.parametrize("case, signals, current, state, settings, target, reason", [
    # a burst's start: 40 req/s in the last 15 s, the minute's rate rising 1 req/s per second:
    # (40 + 1 x 60 s) / 8 = 12.5 -> 13 at once, past max_step_up (2) and the up cooldown
    ("burst start", sig(40, 15), 2, seen(10), S, 13, "up:burst"),
    ("burst start, in the up cooldown", sig(40, 15), 2, PolicyState(last_up=NOW - 1, last_seen=(NOW - 5, 10, 0)),
     S, 13, "up:burst"),
    ("burst start, without a rise seen yet", sig(40, 15), 2, PolicyState(), S, 5, "up:burst"),
    ("burst start, at max", sig(400, 15), 20, seen(10), S, 20, "hold:at_max:burst"),
    ("burst start, capped by max", sig(400, 15), 2, seen(10), S, 20, "up:burst"),
    # the queue: its growth since the last decision (20 -> 100 in 5 s: 16 req/s the replicas did
    # not take) and itself drained within the start-up (100 / 60 s): (8 + 16 + 1.67) / 8 -> 4
    ("queue growing", sig(8, 8, queue=100), 2, seen(8, queue=20), S, 4, "up:burst"),
    # a slow ramp: 0.02 req/s per second adds 1.2 req/s over the start-up: (20 + 1.2) / 8 -> 3
    ("slow ramp, one more", sig(20, 20), 2, seen(19.9), S, 3, "up:burst"),
    ("slow ramp, enough already", sig(20, 20), 3, seen(19.9), S, 3, "hold:steady"),
    ("falling rate adds nothing", sig(20, 18), 3, seen(30), S, 3, "hold:steady"),
    # a spike shorter than a start-up looks like a burst's start: the rule asks at once (the
    # replicas come too late for it; standing headroom is what serves it, below and in the simulator)
    ("short spike", sig(30, 17), 4, seen(16), S, 6, "up:burst"),
    ("short spike, headroom", sig(30, 17), 4, seen(16), H, 8, "up:burst"),
    ("headroom kept standing", sig(16, 16), 2, seen(16), H, 4, "up:burst"),
    ("headroom there", sig(16, 16), 4, seen(16), H, 4, "hold:steady"),
    # missing data: hold, never scale on silence; no arrival rate or no capacity: only the old rules
    ("no signals", None, 3, seen(10), S, 3, "hold:no_data"),
    ("stale signals", sig(400, 15, at=NOW - 61), 3, seen(10), S, 3, "hold:no_data"),
    ("no load signal", Signals(at=NOW, ongoing=None, arrival_rate=400, request_rate=15), 3, seen(10), S, 3,
     "hold:no_data"),
    ("no arrival rate", Signals(at=NOW, ongoing=10, request_rate=15), 2, seen(10), S, 2, "hold:down_stabilizing"),
    ("no capacity", sig(40, 15), 2, seen(10), OFF, 2, "hold:down_stabilizing"),
    # the stepping rule still applies, and the larger target wins
    ("stepping rule larger", sig(8, 8, ongoing=900), 2, seen(8), S, 4, "up:load"),
    ("burst larger than the step", sig(40, 15, ongoing=900), 2, seen(10), S, 13, "up:burst"),
    # the batch backlog is no load: without a budget it changes nothing; with one it holds that many
    ("batch, no budget", sig(8, 8, batch_queue=5000), 2, seen(8), S, 2, "hold:steady"),
    ("batch, budget", sig(8, 8, batch_queue=5000), 2, seen(8), BATCH, 5, "up:batch_budget"),
    ("batch budget reached", sig(8, 8, batch_queue=5000), 5, seen(8), BATCH, 5, "hold:steady"),
    ("batch budget, no backlog", sig(8, 8, batch_queue=0), 2, seen(8), BATCH, 2, "hold:steady"),
    # a batch backlog alone (no interactive request in flight or arriving): nothing scales up
    # without a budget, nor is a scale-down held; with one it keeps batch_max_replicas, no more
    ("batch alone, at the minimum", ALONE, 1, PolicyState(), S, 1, "hold:steady"),
    ("batch alone, burst sizing sees no arrival", ALONE, 1, seen(0, ago=600), S, 1, "hold:steady"),
    ("batch alone blocks no scale-down", ALONE, 3, LOW, S, 2, "down:low_load"),
    ("batch alone, budget", ALONE, 1, PolicyState(), BATCH, 5, "up:batch_budget"),
    ("batch alone, budget kept", ALONE, 5, LOW, BATCH, 5, "hold:steady"),
    ("batch alone, above the budget", ALONE, 6, LOW, BATCH, 5, "down:low_load"),
])
def test_scale_up_rule(case, signals, current, state, settings, target, reason):
    d = decide(signals, current=current, settings=settings, bounds=B, state=state, now=NOW)
    assert (d.target, d.reason) == (target, reason), case


def test_the_rise_is_remembered_between_decisions():
    d = decide(sig(10, 10), current=2, settings=S, bounds=B, state=PolicyState(), now=NOW)
    assert d.state.last_seen == (NOW, 10, 0)
    nxt = sig(40, 15, at=NOW + 5)
    assert burst_need(nxt, settings=S, state=d.state) == 13


def test_batch_backlog_holds_no_replica_beyond_its_budget():
    low = dict(current=6, bounds=B, now=NOW)
    state = PolicyState(low_since=NOW - 500, low_peak=1)
    budget, none = (x.model_copy(update={"max_step_down": 10}) for x in (BATCH, S))
    # the interactive load needs 2: down to that without a backlog, to the budget with one
    assert decide(sig(8, 8), settings=budget, state=state, **low).target == 2
    assert decide(sig(8, 8, batch_queue=10), settings=budget, state=state, **low).target == 5
    assert decide(sig(8, 8, batch_queue=10), settings=none, state=state, **low).target == 2


def test_scale_down_keeps_the_headroom_and_restarts_its_window():
    state = PolicyState(low_since=NOW - 500, low_peak=1)
    d = decide(sig(8, 8), current=8, settings=H.model_copy(update={"max_step_down": 10}), bounds=B, state=state,
               now=NOW)
    # 8 req/s at 0.8 x 0.6 of 10 per replica: 2 replicas, + 2 standing
    assert (d.target, d.reason) == (4, "down:low_load") and d.state.low_since == NOW


@pytest.mark.parametrize("settings", [S, BATCH], ids=["no budget", "budget"])
def test_a_batch_backlog_neither_wakes_a_model_at_zero_nor_holds_it_from_zero(settings):
    zero = Replicas(min=0, max=20)
    d = decide(ALONE, current=0, settings=settings, bounds=zero, state=PolicyState(), now=NOW)
    assert (d.target, d.reason) == (0, "hold:zero")
    idle = settings.model_copy(update={"idle_to_zero_s": 300})
    d = decide(ALONE, current=1, settings=idle, bounds=zero, state=PolicyState(idle_since=NOW - 400), now=NOW)
    # without a budget the backlog is no reason to stay up; a budget keeps its replicas
    assert (d.target, d.reason) == ((0, "down:idle") if settings is S else (5, "up:batch_budget"))
