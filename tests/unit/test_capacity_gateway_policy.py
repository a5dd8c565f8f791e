"""The gateway's capacity policy, table-driven: the gateway processes' signals and state in,
process count and reason out."""

from __future__ import annotations

import pytest

from cluster.capacity.gateway_policy import GatewaySignals, decide
from cluster.capacity.policy import Decision, PolicyState
from cluster.config.gateway import GatewayAutoscaling, GatewayReplicas
from cluster.config.loader import parse_config

S = GatewayAutoscaling(target_in_flight_per_replica=100, max_loop_lag_s=0.05, down_stabilization_s=120,
                       up_cooldown_s=30, down_cooldown_s=60)
B = GatewayReplicas(min=2, max=8)
NOW = 10_000.0
FRESH = NOW - 5


def sig(in_flight=0.0, lag=None, at=FRESH):
    return GatewaySignals(at=at, in_flight=in_flight, loop_lag_s=lag)


def run(signals, current, state=None, bounds=B, settings=S, now=NOW) -> Decision:
    return decide(signals, current=current, settings=settings, bounds=bounds, state=state or PolicyState(), now=now)


@pytest.mark.parametrize("signals, current, state, target, reason", [
    # no data, stale data, a missing in-flight signal: hold (the lag alone decides nothing)
    (None, 3, PolicyState(), 3, "hold:no_data"),
    (sig(900, at=NOW - 61), 3, PolicyState(), 3, "hold:no_data"),
    (GatewaySignals(at=FRESH, in_flight=None, loop_lag_s=1.0), 3, PolicyState(), 3, "hold:no_data"),
    # bounds hold even without data
    (None, 1, PolicyState(), 2, "up:below_min"),
    (None, 9, PolicyState(), 8, "down:above_max"),
    # up at once, to what the requests need
    (sig(201), 2, PolicyState(), 3, "up:load"),  # 201 / 100 per process -> 3
    (sig(650), 2, PolicyState(), 7, "up:load"),  # several at once
    (sig(5000), 2, PolicyState(), 8, "up:load"),  # never above max
    (sig(200), 2, PolicyState(), 2, "hold:steady"),  # exactly at the target: fits
    # a lagging event loop: one more process at once, whatever the in-flight count
    (sig(50, lag=0.051), 2, PolicyState(), 3, "up:loop_lag"),
    (sig(50, lag=0.2), 5, PolicyState(), 6, "up:loop_lag"),
    (sig(650, lag=0.2), 2, PolicyState(), 7, "up:load"),  # load asks for more than one: load wins
    (sig(50, lag=0.05), 2, PolicyState(), 2, "hold:steady"),  # at the bound is not beyond it
    # at max, and the up cooldown
    (sig(900), 8, PolicyState(), 8, "hold:at_max:load"),
    (sig(50, lag=0.2), 8, PolicyState(), 8, "hold:at_max:loop_lag"),
    (sig(650), 2, PolicyState(last_up=NOW - 10), 2, "hold:up_cooldown:load"),
    (sig(650), 2, PolicyState(last_up=NOW - 31), 7, "up:load"),
    (sig(50, lag=0.2), 3, PolicyState(last_up=NOW - 10), 3, "hold:up_cooldown:loop_lag"),
    # down only once the lower count has been wanted for the window, to the window's peak need
    (sig(150), 5, PolicyState(), 5, "hold:down_stabilizing"),
    (sig(150), 5, PolicyState(low_since=NOW - 119, low_peak=2), 5, "hold:down_stabilizing"),
    (sig(150), 5, PolicyState(low_since=NOW - 120, low_peak=2), 2, "down:low_load"),
    (sig(150), 5, PolicyState(low_since=NOW - 120, low_peak=4), 4, "down:low_load"),  # the window's peak
    (sig(10), 5, PolicyState(low_since=NOW - 500, low_peak=1), 2, "down:low_load"),  # never below min
    (sig(10), 2, PolicyState(low_since=NOW - 500, low_peak=1), 2, "hold:steady"),  # at min
    # the down cooldown counts from the last scale-down only (an up broke the window anyway)
    (sig(150), 5, PolicyState(low_since=NOW - 500, low_peak=2, last_down=NOW - 30), 5, "hold:down_cooldown"),
    (sig(150), 5, PolicyState(low_since=NOW - 500, low_peak=2, last_down=NOW - 61), 2, "down:low_load"),
    # a loop lagging over half its bound is not "a lower count wanted": removing a process adds load to it
    (sig(150, lag=0.03), 5, PolicyState(low_since=NOW - 500, low_peak=2), 5, "hold:steady"),
    (sig(150, lag=0.02), 5, PolicyState(low_since=NOW - 500, low_peak=2), 2, "down:low_load"),
    # the fair queue's held requests are not in `in_flight` (signals.py subtracts them); negative reads clamp
    (sig(-3), 3, PolicyState(low_since=NOW - 500, low_peak=1), 2, "down:low_load"),
])
def test_decide(signals, current, state, target, reason):
    d = run(signals, current, state)
    assert (d.target, d.reason) == (target, reason)


def test_the_window_breaks_on_any_pressure_and_restarts_after_a_step_down():
    d = run(sig(150), 5)
    assert d.state.low_since == NOW and d.state.low_peak == 2
    # a lagging loop mid-window: scale-up, the window closes
    d = run(sig(150, lag=0.2, at=NOW + 55), 5, d.state, now=NOW + 60)
    assert d.reason == "up:loop_lag" and d.state.low_since is None and d.state.last_up == NOW + 60
    # low again: a new window, no scale-down before it is full
    d = run(sig(150, at=NOW + 115), 6, d.state, now=NOW + 120)
    assert d.reason == "hold:down_stabilizing" and d.state.low_since == NOW + 120
    d = run(sig(150, at=NOW + 235), 6, d.state, now=NOW + 240)
    assert (d.target, d.reason) == (2, "down:low_load")
    # at the peak the window closes: a further step needs a new full window
    d = run(sig(10, at=NOW + 355), 2, d.state, now=NOW + 360)
    assert d.reason == "hold:steady"


def test_gateway_autoscaling_is_on_only_with_max_above_min():
    base = {"models": {"m": {"source": "external"}}}
    assert not parse_config(base).gateway.replicas.autoscaled
    assert not parse_config({**base, "gateway": {"replicas": 3}}).gateway.replicas.autoscaled
    cfg = parse_config({**base, "gateway": {"replicas": {"min": 2, "max": 6}}})
    assert cfg.gateway.replicas.autoscaled and cfg.gateway.replicas.start == 2
