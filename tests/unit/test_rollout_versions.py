"""Version choice during a rollout (cluster/routing/versions.py): the weight's share, sticky
sessions that stay on their version as the weight grows, per-request splits without one."""

import random

import pytest

from cluster.routing.versions import CANDIDATE, STABLE, pick_version, session_point


@pytest.mark.parametrize(("weight", "session", "draw", "expect"), [
    (0, "s", 0.0, STABLE),
    (100, "s", 0.99, CANDIDATE),
    (30, None, 0.29, CANDIDATE),
    (30, None, 0.30, STABLE),
    (-5, None, 0.0, STABLE),
])
def test_pick(weight, session, draw, expect):
    assert pick_version(weight, session, lambda: draw) == expect


@pytest.mark.parametrize("weight", [10, 20, 50])
def test_sessions_split_by_the_weight(weight):
    picks = [pick_version(weight, f"session-{i}", lambda: 0.0) for i in range(20_000)]
    assert abs(picks.count(CANDIDATE) / len(picks) * 100 - weight) < 1.5


def test_a_session_keeps_its_version_and_stays_on_the_candidate_as_the_weight_grows():
    sessions = [f"user-{i}" for i in range(2000)]
    for s in sessions:
        assert len({pick_version(20, s, random.random) for _ in range(5)}) == 1  # sticky, whatever the draw
    on_candidate_at_20 = {s for s in sessions if pick_version(20, s, random.random) == CANDIDATE}
    on_candidate_at_50 = {s for s in sessions if pick_version(50, s, random.random) == CANDIDATE}
    assert on_candidate_at_20 and on_candidate_at_20 <= on_candidate_at_50


def test_session_points_are_in_range_and_spread():
    points = [session_point(str(i)) for i in range(1000)]
    assert all(0 <= p < 100 for p in points) and min(points) < 5 and max(points) > 95


def test_a_version_without_a_routable_replica_falls_back_and_is_counted(tmp_path):
    """RolloutView.pick: the picked version with no replica taking requests gives way to the
    other one, counted in owc_rollout_version_fallbacks_total{model,version=picked}."""
    from cluster.config.loader import parse_config
    from cluster.discovery.endpoints import Endpoint
    from cluster.discovery.rollouts import RolloutFiles
    from cluster.gateway.rollout.view import RolloutView

    files = RolloutFiles(tmp_path)
    files.write("m", {"state": "analysing", "weight": 20})
    cfg = parse_config({"models": {"m": {"source": "external", "candidate": {"source": "other"}}}})
    draws = iter([0.1, 0.1, 0.1, 0.9])
    view = RolloutView(cfg, files, draw=lambda: next(draws))
    view.reload()
    stable, cand = Endpoint("m", "s", "http://s"), Endpoint("m", "c", "http://c", version=CANDIDATE)
    draining = Endpoint("m", "c", "http://c", draining=True, version=CANDIDATE)

    def fallbacks():
        fam = [f for f in view.collect() if f.name == "owc_rollout_version_fallbacks"][0]
        return {tuple(s.labels.values()): s.value for s in fam.samples}

    assert view.pick("m", None, [stable, cand]) == CANDIDATE and fallbacks() == {}
    assert view.pick("m", None, [stable, draining]) == STABLE
    assert view.pick("m", None, [stable]) == STABLE
    assert view.pick("m", None, [cand]) == CANDIDATE  # drew stable (0.9), none: the candidate answers
    assert fallbacks() == {("m", CANDIDATE): 2, ("m", STABLE): 1}
