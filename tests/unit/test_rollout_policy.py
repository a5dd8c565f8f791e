"""The rollout analysis (cluster/capacity/rollout.py), table-driven: windows, the three
gates with their slack, no data, the last step, operator commands, state round trip."""

import json
import math

import pytest

from cluster.capacity import rollout as ro
from cluster.capacity.rollout import Counters, Served, Window
from cluster.config.rollout import Gates, Rollout

R = Rollout(steps=[20, 50], step_s=60, conformance=False)
GOOD = Served(requests=400, errors=0, ttft_p95_s=0.20, itl_p95_s=0.02)


def _w(**cand) -> Window:
    return Window(stable=GOOD, candidate=Served(**{"requests": 100, "errors": 0, "ttft_p95_s": 0.2,
                                                    "itl_p95_s": 0.02, **cand}))


def _analysing(step=0, t0=0.0):
    return ro.RolloutState(state="analysing", step=step, weight=R.analysed_steps[step], window_start=t0)


# --- gates: (candidate figures, which gate fails or None) -------------------------------
@pytest.mark.parametrize(("cand", "stable", "fails"), [
    ({}, {}, None),
    ({"errors": 1}, {}, "max_error_rate_ratio"),  # 1 % vs 0 %: above the 0.5-point slack
    ({"errors": 0}, {"errors": 4}, None),  # stable worse: fine
    ({"errors": 2}, {"errors": 4}, None),  # 2 % vs 1 %: limit 1.5 × 1 % + 0.5 = 2 %: passes at the limit
    ({"errors": 3}, {"errors": 4}, "max_error_rate_ratio"),  # 3 % > 2 %
    ({"ttft_p95_s": 0.29}, {}, None),  # < 1.5 × 0.2
    ({"ttft_p95_s": 0.31}, {}, "max_ttft_p95_ratio"),  # > 0.30 and > 0.25
    ({"ttft_p95_s": 0.31}, {"ttft_p95_s": 0.30}, None),  # within both
    ({"itl_p95_s": 0.06}, {}, None),  # 3 × stable, but only +0.04 s < min_delta_s 0.05
    ({"itl_p95_s": 0.08}, {}, "max_itl_p95_ratio"),  # 4 × and +0.06 s
    ({"ttft_p95_s": None, "itl_p95_s": None}, {"ttft_p95_s": None, "itl_p95_s": None}, None),  # not streamed: not measured
])
def test_gates_with_their_slack(cand, stable, fails):
    w = Window(stable=Served(**{**GOOD.__dict__, **stable}),
               candidate=Served(**{"requests": 100, "errors": 0, "ttft_p95_s": 0.2, "itl_p95_s": 0.02, **cand}))
    gates = ro.evaluate(w, Gates())
    assert [g.name for g in gates if g.passed is False] == ([fails] if fails else [])


def test_latency_gates_not_measured_without_samples():
    gates = ro.evaluate(Window(Served(10, 0), Served(10, 0)), Gates())
    assert [(g.name, g.passed) for g in gates] == [
        ("max_error_rate_ratio", True), ("max_ttft_p95_ratio", None), ("max_itl_p95_ratio", None)]


# --- the state machine over time: (state, window, now) -> (state, step, weight, reason has) --
@pytest.mark.parametrize(("state", "window", "now", "expect"), [
    (_analysing(), _w(), 59, ("analysing", 0, 20, None)),  # window not over: nothing
    (_analysing(), _w(requests=49, ttft_p95_s=9.0), 60, ("analysing", 0, 20, None)),  # too few to decide: runs on
    (_analysing(), Window(Served(49, 0, 0.2, 0.02), Served(100, 0, 9.0, 0.02)), 60, ("analysing", 0, 20, None)),
    (_analysing(), _w(requests=50, ttft_p95_s=9.0), 60, ("rolled_back", 0, 0, "TTFT p95")),
    (_analysing(), _w(), 60, ("analysing", 1, 50, None)),  # passed: next step
    (_analysing(1), _w(), 60, ("promoted", 1, 100, "every step passed")),  # the last step promotes
    (_analysing(), _w(ttft_p95_s=2.0), 60, ("rolled_back", 0, 0, "TTFT p95 2.000s")),
    (_analysing(1), _w(errors=50), 60, ("rolled_back", 1, 0, "step 2 (50%): 5xx share 50.0%")),
    (_analysing(), None, 60, ("paused", 0, 20, "no metrics")),  # never promotes on no data
    (_analysing(1), _w(requests=0), 60, ("paused", 1, 50, "candidate served no request")),
    (_analysing(1), Window(Served(0, 0), GOOD), 60, ("paused", 1, 50, "stable served no request")),
    (_analysing(1), _w(ttft_p95_s=None), 60, ("paused", 1, 50, "TTFT measured for stable only")),
    # A candidate failing every request streams no token: its 5xx decide, not "no data".
    (_analysing(), _w(errors=100, ttft_p95_s=None, itl_p95_s=None), 60, ("rolled_back", 0, 0, "5xx share 100.0%")),
    (_analysing(), _w(requests=20, errors=20, ttft_p95_s=None, itl_p95_s=None), 60, ("analysing", 0, 20, None)),
    (_analysing(), Window(Served(400, 400), _w().candidate), 60, ("paused", 0, 20, "TTFT measured for candidate")),
    (_analysing(), _w(errors=1, ttft_p95_s=None, itl_p95_s=None), 60, ("rolled_back", 0, 0, "5xx share 1.0%")),
    (ro.RolloutState(state="paused", paused_by="no_data", step=1, weight=50), _w(), 70, ("analysing", 1, 50, None)),
    (ro.RolloutState(state="paused", paused_by="no_data", step=1, weight=50), None, 70, ("paused", 1, 50, None)),
    (ro.RolloutState(state="paused", paused_by="no_data", step=1, weight=50), _w(errors=100, ttft_p95_s=None),
     70, ("analysing", 1, 50, None)),  # traffic again, the candidate failing it: analysed (its 5xx decide)
    (ro.RolloutState(state="paused", paused_by="operator", step=1, weight=50), _w(), 70, ("paused", 1, 50, None)),
    (ro.RolloutState(state="promoted", step=1, weight=100), _w(errors=100), 999, ("promoted", 1, 100, None)),
    (ro.RolloutState(state="pending"), _w(), 999, ("pending", 0, 0, None)),
])
def test_advance(state, window, now, expect):
    s = ro.advance(state, R, window, now)
    assert (s.state, s.step, s.weight) == expect[:3]
    if expect[3]:
        assert expect[3] in s.reason
    if s.state == "analysing" and (s.step, s.state) != (state.step, state.state):
        assert s.window_start == now  # a new step (or a resumed one) gets a fresh window


def test_a_full_healthy_rollout_and_a_trailing_100():
    r = Rollout(steps=[10, 50, 100], step_s=5, conformance=False)
    s = ro.start(r, 0)
    weights = [s.weight]
    for t in (5, 10):
        s = ro.advance(s, r, _w(), t)
        weights.append(s.weight)
    assert (weights, s.state) == ([10, 50, 100], "promoted")


def test_conformance_gate():
    r = Rollout(steps=[10], step_s=5)
    s = ro.start(r, 0)
    assert (s.state, s.weight) == ("pending", 0)
    bad = ro.conformance_done(s, r, ["chat tools", "responses stream"], 1)
    assert (bad.state, bad.weight, bad.reason) == ("aborted", 0, "conformance failed: chat tools, responses stream")
    ok = ro.conformance_done(s, r, [], 1)
    assert (ok.state, ok.weight, ok.window_start) == ("analysing", 10, 1)


@pytest.mark.parametrize(("state", "cmd", "expect"), [
    (_analysing(), "promote", ("promoted", 100)),
    (_analysing(), "abort", ("aborted", 0)),
    (ro.RolloutState(), "abort", ("aborted", 0)),
    (_analysing(), "pause", ("paused", 20)),
    (ro.RolloutState(state="paused", paused_by="operator", step=0, weight=20), "resume", ("analysing", 20)),
    (ro.RolloutState(state="paused", paused_by="no_data", step=0, weight=20), "promote", ("promoted", 100)),
    (ro.RolloutState(state="promoted", weight=100), "abort", "has ended"),
    (ro.RolloutState(state="rolled_back"), "resume", "has ended"),
    (_analysing(), "resume", "only a paused"),
    (ro.RolloutState(), "pause", "only an analysing"),
    (ro.RolloutState(state="paused", paused_by="operator", step=0, weight=20), "pause", "already paused"),
    (_analysing(), "explode", "unknown rollout command"),
])
def test_commands(state, cmd, expect):
    if isinstance(expect, str):
        with pytest.raises(ro.CommandRefused, match=expect):
            ro.command(state, R, cmd, 5)
        return
    s = ro.command(state, R, cmd, 5)
    assert (s.state, s.weight) == expect
    if cmd == "resume":
        assert s.window_start == 5


def test_an_operator_pause_holds_a_step_paused_for_no_data():
    """Paused for no data, a step resumes by itself once both versions serve again; an
    operator's pause then (docs: pause in any state not ended) holds it until resume."""
    no_data = ro.RolloutState(state="paused", paused_by="no_data", step=1, weight=50, window_start=0)
    held = ro.command(no_data, R, "pause", 5)
    assert (held.state, held.paused_by, held.weight) == ("paused", "operator", 50)
    assert ro.advance(held, R, _w(), 100) == held  # data again: still held
    resumed = ro.command(held, R, "resume", 110)
    assert (resumed.state, resumed.weight, resumed.window_start) == ("analysing", 50, 110)


def test_state_survives_a_round_trip_through_json():
    s = ro.advance(_analysing(), R, _w(), 60)
    s = ro.advance(s, R, _w(ttft_p95_s=5.0), 120)
    back = ro.RolloutState.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s and back.state == "rolled_back" and len(back.gates) == 3


# --- windows ------------------------------------------------------------------------------
INF = math.inf


@pytest.mark.parametrize(("buckets", "q", "expect"), [
    ({}, 0.95, None),
    ({0.1: 0, 1.0: 0, INF: 0}, 0.95, None),
    ({0.1: 100, 1.0: 100, INF: 100}, 0.95, 0.095),  # all in the first bucket: linear from 0
    ({0.1: 0, 1.0: 100, INF: 100}, 0.5, 0.55),
    ({0.1: 50, 1.0: 90, INF: 100}, 0.95, 1.0),  # in +Inf: the highest finite bound
])
def test_histogram_quantile(buckets, q, expect):
    got = ro.histogram_quantile(q, buckets)
    assert got == expect if expect is None else got == pytest.approx(expect)


@pytest.mark.parametrize(("before", "after", "expect"), [
    ({"a": Counters(10, 1)}, {"a": Counters(30, 2)}, (20, 1)),
    ({"a": Counters(10, 1), "b": Counters(5, 0)}, {"a": Counters(30, 2), "b": Counters(9, 1)}, (24, 2)),
    ({"a": Counters(100, 5)}, {"a": Counters(7, 1)}, (7, 1)),  # a gateway process restarted: all of it is new
    ({}, {"a": Counters(3, 0)}, (3, 0)),  # a new one counts from zero
    ({"a": Counters(3, 0), "gone": Counters(9, 9)}, {"a": Counters(3, 0)}, (0, 0)),  # one gone: not counted
])
def test_served_between(before, after, expect):
    s = ro.served_between(before, after)
    assert (s.requests, s.errors) == expect


def test_served_between_takes_the_window_s_histogram():
    before = {"a": Counters(10, 0, ttft={0.1: 10, 1.0: 10, INF: 10})}
    after = {"a": Counters(20, 0, ttft={0.1: 10, 1.0: 20, INF: 20})}  # the window's 10 all in (0.1, 1.0]
    assert ro.served_between(before, after).ttft_p95_s == pytest.approx(0.1 + 0.9 * 0.95)
