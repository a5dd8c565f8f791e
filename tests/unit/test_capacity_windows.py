"""Windows rebuilt from history (what a controller that becomes leader acts on), table-driven:
the trailing run, the engine policy's scale-down and idle windows, the gateway's window; and
that a rebuilt window leads to the decisions an uninterrupted leader would have made."""

from __future__ import annotations

import pytest

from cluster.capacity import gateway_policy, policy
from cluster.capacity.gateway_policy import GatewaySignals
from cluster.capacity.policy import PolicyState, Signals
from cluster.capacity.windows import Window, trailing_window
from cluster.config.gateway import GatewayAutoscaling, GatewayReplicas
from cluster.config.schema import Autoscaling, Replicas

NOW = 10_000.0
STEP = 15.0


def pts(*needs, end=NOW):
    """Points STEP apart ending at ``end``; ``"-"`` is a missing point."""
    n = len(needs)
    return [(end - (n - 1 - i) * STEP, v) for i, v in enumerate(needs) if v != "-"]


@pytest.mark.parametrize("points, window", [
    ([], Window(None)),
    (pts(None), Window(None)),  # the condition does not hold now
    (pts(2), Window(NOW, 2)),
    (pts(3, 2, 1), Window(NOW - 30, 3)),
    (pts(1, None, 2, 1), Window(NOW - 15, 2)),  # broken: only the run after the break counts
    (pts(1, 1, "-", 2, 1), Window(NOW - 15, 2)),  # a missing point breaks it too
    (pts(1, 2, end=NOW - 30), Window(None)),  # the latest point is too old: nothing holds now
    (pts(1, 2, end=NOW - 20), Window(NOW - 35, 2)),  # within 1.5 steps of now
    ([(NOW + 15, 5), (NOW, 1)], Window(NOW, 1)),  # points after now are ignored
])
def test_trailing_window(points, window):
    assert trailing_window(points, now=NOW, max_gap_s=1.5 * STEP) == window


A = Autoscaling(enabled=True, target_ongoing_per_replica=4, target_queue_per_replica=2, ttft_slo_s=1.0,
                down_utilization=0.5, down_stabilization_s=120, down_cooldown_s=60, up_cooldown_s=30,
                idle_to_zero_s=60, stale_after_s=60)
R = Replicas(min=0, max=6)


def engine_history(*readings, end=NOW):
    """(ongoing, extra signals) per step; ``"-"``: no sample at that step; ``("stale", x)``: a
    sample Prometheus still returns, 90 s old."""
    n = len(readings)
    out = []
    for i, r in enumerate(readings):
        t = end - (n - 1 - i) * STEP
        if r == "-":
            continue
        if isinstance(r, tuple) and r[0] == "stale":
            out.append((t, Signals(at=t - 90, ongoing=r[1])))
            continue
        ongoing, extra = r if isinstance(r, tuple) else (r, {})
        out.append((t, Signals(at=t - 2, ongoing=ongoing, **extra)))
    return out


@pytest.mark.parametrize("history, current, low_since, low_peak, idle_since", [
    ([], 3, None, None, None),  # Prometheus had nothing: no window, it starts afresh
    # 2 per replica at 0.5: 3 in flight need 2 of 3 replicas, 1 needs 1
    (engine_history(3, 3, 1, 3), 3, NOW - 45, 2, None),
    (engine_history(9, 3, 1, 3), 3, NOW - 30, 2, None),  # 9 needed 5 > 3: the window started after it
    (engine_history(3, (3, {"queue": 1}), 1, 3), 3, NOW - 15, 2, None),  # a queued request breaks it
    (engine_history(3, (3, {"ttft_p95_s": 1.5}), 1), 3, NOW, 1, None),  # a TTFT miss breaks it
    (engine_history(3, (3, {"kv_usage": 0.95}), 1), 3, NOW, 1, None),  # KV pressure breaks it
    (engine_history(3, "-", 3, 1), 3, NOW - 15, 2, None),  # a missing step breaks it
    (engine_history(3, ("stale", 3), 3, 1), 3, NOW - 15, 2, None),  # so does a stale sample
    (engine_history(3, 3, 3), 2, None, None, None),  # 3 in flight need 2: no lower count than 2 wanted
    (engine_history(1, 1, 1), 1, None, None, None),  # at the floor (1) no scale-down window
    # idle: nothing in flight, nothing arriving
    (engine_history((0, {"request_rate": 0}), (0, {"request_rate": 0}), (0, {"request_rate": 0})),
     1, None, None, NOW - 30),
    (engine_history((0, {"request_rate": 0}), (0, {"request_rate": 0.2}), (0, {"request_rate": 0})),
     1, None, None, NOW),
    (engine_history((0, {"request_rate": 0}), 1, (0, {"request_rate": 0})), 1, None, None, NOW),
])
def test_engine_windows_rebuilt_from_history(history, current, low_since, low_peak, idle_since):
    s = policy.rebuild(history, current=current, settings=A, bounds=R, now=NOW, step_s=STEP,
                       last_up=NOW - 500, last_down=NOW - 400)
    assert (s.low_since, s.low_peak if s.low_since is not None else None, s.idle_since) == \
        (low_since, low_peak, idle_since)
    assert (s.last_up, s.last_down) == (NOW - 500, NOW - 400)  # the cooldowns: from the Lease, as given


def test_engine_history_reaches_the_longest_window():
    assert policy.history_s(A) == 120
    assert policy.history_s(A.model_copy(update={"idle_to_zero_s": 900})) == 900
    assert policy.history_s(A.model_copy(update={"idle_to_zero_s": None})) == 120


G = GatewayAutoscaling(target_in_flight_per_replica=100, max_loop_lag_s=0.05, down_stabilization_s=60,
                       down_cooldown_s=60, up_cooldown_s=30)
GB = GatewayReplicas(min=1, max=6)


def gateway_history(*readings, end=NOW):
    n = len(readings)
    out = []
    for i, r in enumerate(readings):
        t = end - (n - 1 - i) * STEP
        if r == "-":
            continue
        in_flight, lag = r if isinstance(r, tuple) else (r, None)
        out.append((t, GatewaySignals(at=t - 2, in_flight=in_flight, loop_lag_s=lag)))
    return out


@pytest.mark.parametrize("history, current, low_since, low_peak", [
    ([], 3, None, None),
    (gateway_history(150, 90, 150), 3, NOW - 30, 2),
    (gateway_history(350, 150, 90), 3, NOW - 15, 2),  # 350 needed 4 > 3
    (gateway_history(150, (90, 0.04), 150), 3, NOW, 2),  # a loop over half its bound breaks it
    (gateway_history(150, (90, 0.01), 150), 3, NOW - 30, 2),  # well within: no break
    (gateway_history(150, "-", 150), 3, NOW, 2),  # a missing step breaks it
    (gateway_history(150, 150), 2, None, None),  # 150 need 2: nothing lower than 2 wanted
    (gateway_history(10, 10), 1, None, None),  # at min
])
def test_gateway_window_rebuilt_from_history(history, current, low_since, low_peak):
    s = gateway_policy.rebuild(history, current=current, settings=G, bounds=GB, now=NOW, step_s=STEP,
                               last_up=None, last_down=NOW - 100)
    assert (s.low_since, s.low_peak if s.low_since is not None else None) == (low_since, low_peak)
    assert s.last_down == NOW - 100


@pytest.mark.parametrize("leader_saw, history, first_down_at", [
    # The window opened at NOW - 90 and held: the new leader scales down when an uninterrupted
    # leader would have (NOW + 30: 120 s after it opened), not earlier and not 120 s later.
    (None, [3] * 7, NOW + 30),
    # It remembered a window open since NOW - 300 (from an earlier lead), but a burst at
    # NOW - 45 broke it meanwhile: the rebuilt window starts at NOW - 30, so no scale-down
    # before NOW + 90 — the remembered window would have scaled down at once.
    (PolicyState(low_since=NOW - 300, low_peak=2), [3, 3, 3, 3, 12, 3, 3, 3], NOW + 90),
])
def test_a_new_leader_scales_down_when_an_uninterrupted_leader_would(leader_saw, history, first_down_at):
    hist = engine_history(*history)
    state = policy.rebuild(hist, current=3, settings=A, bounds=R, now=NOW, step_s=STEP)
    if leader_saw is not None:  # what it remembered would have been premature
        assert policy.decide(hist[-1][1], current=3, settings=A, bounds=R, state=leader_saw, now=NOW).reason \
            == "down:low_load"
    t, downs = NOW, []
    while t <= NOW + 200:
        d = policy.decide(Signals(at=t - 2, ongoing=3), current=3 - len(downs), settings=A, bounds=R, state=state,
                          now=t)
        state = d.state
        if d.target < 3 - len(downs):
            downs.append(t)
        t += STEP
    assert downs[0] == first_down_at
    assert all(b - a >= A.down_cooldown_s for a, b in zip(downs, downs[1:]))  # no faster than the cooldown
