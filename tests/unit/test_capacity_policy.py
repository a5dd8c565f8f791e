"""The capacity policy, table-driven: signals and state in, target and reason out."""

from __future__ import annotations

import pytest

from cluster.capacity.policy import Decision, PolicyState, Signals, decide
from cluster.config.schema import Autoscaling, Replicas

S = Autoscaling(enabled=True, target_ongoing_per_replica=4, target_queue_per_replica=2, ttft_slo_s=1.0,
                up_cooldown_s=30, down_cooldown_s=60, down_stabilization_s=120, max_step_up=3, idle_to_zero_s=600)
B = Replicas(min=1, max=6)
Z = Replicas(min=0, max=6)
NOW = 10_000.0
FRESH = NOW - 5


def sig(ongoing=0.0, **kw):
    return Signals(at=kw.pop("at", FRESH), ongoing=ongoing, **kw)


def run(signals, current, state=None, bounds=B, settings=S, now=NOW) -> Decision:
    return decide(signals, current=current, settings=settings, bounds=bounds, state=state or PolicyState(), now=now)


@pytest.mark.parametrize("signals, current, state, bounds, target, reason", [
    # no data, stale data, a missing load signal: hold — never scale on silence
    (None, 3, PolicyState(), B, 3, "hold:no_data"),
    (sig(40, at=NOW - 61), 3, PolicyState(), B, 3, "hold:no_data"),
    (Signals(at=FRESH, ongoing=None, queue=50), 3, PolicyState(), B, 3, "hold:no_data"),
    (None, 0, PolicyState(), B, 1, "up:below_min"),  # bounds hold even without data
    (None, 9, PolicyState(), B, 6, "down:above_max"),
    # up fast, several at once, on any pressure
    (sig(20), 2, PolicyState(), B, 5, "up:load"),  # 20 in flight / 4 per replica = 5
    (sig(40), 2, PolicyState(), B, 5, "up:load"),  # at most max_step_up (3) per decision
    (sig(4, queue=7), 3, PolicyState(), B, 4, "up:queue"),
    (sig(4, ttft_p95_s=1.5), 2, PolicyState(), B, 3, "up:ttft_slo"),
    (sig(4, kv_usage=0.95), 2, PolicyState(), B, 3, "up:kv_cache"),
    (sig(40), 6, PolicyState(), B, 6, "hold:at_max:load"),
    # cooldown after a scale-up
    (sig(20), 2, PolicyState(last_up=NOW - 10), B, 2, "hold:up_cooldown:load"),
    (sig(20), 2, PolicyState(last_up=NOW - 31), B, 5, "up:load"),
    # steady: load fits the replicas, no pressure
    (sig(7), 2, PolicyState(), B, 2, "hold:steady"),
    # down only after the low load has held down_stabilization_s, one step, after the cooldown
    (sig(1), 3, PolicyState(), B, 3, "hold:down_stabilizing"),
    (sig(1), 3, PolicyState(low_since=NOW - 100), B, 3, "hold:down_stabilizing"),
    (sig(1), 3, PolicyState(low_since=NOW - 121), B, 2, "down:low_load"),
    (sig(1), 3, PolicyState(low_since=NOW - 500, last_up=NOW - 30), B, 3, "hold:down_cooldown"),
    (sig(1, queue=1), 3, PolicyState(low_since=NOW - 500), B, 3, "hold:steady"),  # a queue: not idle enough
    (sig(5), 3, PolicyState(low_since=NOW - 500), B, 3, "hold:steady"),  # 5 > (3-1) x 4 x 0.6: hysteresis
    (sig(0), 1, PolicyState(low_since=NOW - 500), B, 1, "hold:steady"),  # never below min (1)
    # a window open long enough (e.g. rebuilt from history): the next step needs only the cooldown
    (sig(1), 3, PolicyState(low_since=NOW - 500, last_down=NOW - 61), B, 2, "down:low_load"),
    (sig(1), 3, PolicyState(low_since=NOW - 500, last_down=NOW - 30), B, 3, "hold:down_cooldown"),
    # scale to zero after idle_to_zero_s without requests, and wake-up
    (sig(0, request_rate=0), 1, PolicyState(idle_since=NOW - 599), Z, 1, "hold:steady"),
    (sig(0, request_rate=0), 1, PolicyState(idle_since=NOW - 600), Z, 0, "down:idle"),
    (sig(0, request_rate=0.1), 1, PolicyState(idle_since=NOW - 900), Z, 1, "hold:steady"),
    (sig(0, request_rate=0), 1, PolicyState(idle_since=NOW - 900), B, 1, "hold:steady"),  # min 1: never zero
    (sig(0), 0, PolicyState(), Z, 0, "hold:zero"),
    (sig(1), 0, PolicyState(last_up=NOW - 1), Z, 1, "up:wake"),  # wake ignores the cooldown
])
def test_decide(signals, current, state, bounds, target, reason):
    d = run(signals, current, state, bounds)
    assert (d.target, d.reason) == (target, reason)
    assert d.changed == (target != current)


def test_state_carries_the_windows():
    d = run(sig(1), 3)
    assert d.state.low_since == NOW and d.state.low_peak == 1
    d2 = run(sig(1, at=NOW + 120), 3, d.state, now=NOW + 121)
    assert d2.target == 2 and d2.state.last_down == NOW + 121 and d2.state.low_since == NOW + 121  # restarted
    assert run(sig(1, at=NOW + 200), 2, d2.state, now=NOW + 201).reason == "hold:down_stabilizing"
    # at the level the load needs, the window closes
    d3 = run(sig(4, at=NOW + 200), 2, d2.state, now=NOW + 201)
    assert d3.reason == "hold:steady" and d3.state.low_since is None
    # a burst in between resets the window
    d3 = run(sig(30), 3, PolicyState(low_since=NOW - 100))
    assert d3.reason == "up:load" and d3.state.low_since is None and d3.state.last_up == NOW


def test_idle_window_starts_at_the_first_idle_reading():
    d = run(sig(0, request_rate=0), 1, bounds=Z)
    assert d.state.idle_since == NOW and d.target == 1
    assert run(sig(0, request_rate=0, at=NOW + 599), 1, d.state, bounds=Z, now=NOW + 600).reason == "down:idle"


@pytest.mark.parametrize("readings, target", [
    # (in flight, seconds after the window opened), replicas 6, up to 6 down per step:
    # down to the most replicas any reading of the window needed (4 per replica at 0.6 -> 2.4)
    ([(1, 0), (9, 60), (2, 121)], 4),   # 9 in flight needed ceil(9 / 2.4) = 4
    ([(1, 0), (2, 60), (2, 121)], 1),   # never more than 1 needed
    ([(1, 0), (20, 60), (2, 121)], 6),  # 20 needed 9 > 6: the window broke at 60 s and restarts
])
def test_scale_down_goes_to_the_peak_need_of_the_window(readings, target):
    settings = S.model_copy(update={"max_step_down": 6})
    state, d = PolicyState(), None
    for ongoing, dt in readings:
        d = run(sig(ongoing, at=NOW + dt), 6, state, settings=settings, now=NOW + dt)
        state = d.state
    assert d.target == target
