"""owc serve's rollout analysis (cluster/rollouts/): the gateway processes' own metrics text
parsed per version, operator commands answered, a restart resuming the step it was in
(its window again in full, no step skipped), and the drain of the version that lost."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cluster.capacity.rollout import RolloutState
from cluster.config.loader import parse_config
from cluster.discovery.rollouts import RolloutFiles
from cluster.gateway.observability.metrics import GatewayMetrics
from cluster.rollouts.analysis import LocalAnalysis, parse_counters
from cluster.rollouts.local import RolloutLoop, drained_by

CFG = parse_config({"models": {"m": {"source": "x", "candidate": {"engine_kwargs": {"max_num_seqs": 2}},
                                     "rollout": {"steps": [20, 50], "step_s": 10, "conformance": False}}}})


class Gateway:
    """One gateway process's metrics, as its /metrics serves them."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.m = GatewayMetrics(self.registry)

    def serve(self, version: str, n: int, *, code: str = "200", ttft: float = 0.1) -> None:
        for _ in range(n):
            self.m.requests.labels("m", "t", "/v1/chat/completions", code, version).inc()
            self.m.ttft.labels("m", version).observe(ttft)
            self.m.itl.labels("m", version).observe(0.01)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


@pytest.mark.parametrize(("state", "drained"), [
    ("promoted", "m"), ("rolled_back", "m-candidate"), ("aborted", "m-candidate"),
    ("analysing", None), ("paused", None), ("pending", None),
])
def test_the_version_that_lost_drains(state, drained):
    assert drained_by("m", RolloutState(state=state)) == drained


def test_parse_counters_per_version():
    g = Gateway()
    g.serve("stable", 8)
    g.serve("candidate", 2, code="503", ttft=2.0)
    c = parse_counters(g.text(), "m")
    assert (c["stable"].requests, c["stable"].errors, c["candidate"].requests, c["candidate"].errors) == (8, 0, 2, 2)
    assert c["candidate"].ttft[float("inf")] == 2 and parse_counters(g.text(), "other")["stable"].requests == 0


def _analysis(tmp_path, gw: Gateway, clock: list[float], **kw) -> LocalAnalysis:
    files = RolloutFiles(tmp_path)
    files.announce("http://gw")
    return LocalAnalysis(CFG, files, scrape=lambda url: gw.text(), clock=lambda: clock[0], **kw)


def test_a_rollback_drains_the_candidate(tmp_path):
    gw, clock, drained = Gateway(), [0.0], []
    loop = RolloutLoop(CFG, RolloutFiles(tmp_path), scale=lambda k, n: drained.append((k, n)),
                       scrape=lambda url: gw.text())
    loop.analysis._clock = lambda: clock[0]
    RolloutFiles(tmp_path).announce("http://gw")
    loop.analysis.tick()  # the window's baseline
    gw.serve("stable", 60)
    gw.serve("candidate", 50, code="500")
    clock[0] = 11
    loop.analysis.tick()
    st = RolloutFiles(tmp_path).read("m")
    assert (st["state"], st["weight"]) == ("rolled_back", 0) and "5xx share 100.0%" in st["reason"]
    assert drained == [("m-candidate", 0)]


def _step_1_served(tmp_path) -> tuple[Gateway, list[float], LocalAnalysis]:
    """Step 1's window begun, both versions served healthily through it, its end reached: the
    next tick passes the step."""
    gw, clock = Gateway(), [0.0]
    a = _analysis(tmp_path, gw, clock)
    a.tick()
    gw.serve("stable", 80)
    gw.serve("candidate", 50)
    clock[0] = 11
    return gw, clock, a


def test_a_step_that_passes_is_logged_with_its_gates(tmp_path, caplog):
    gw, clock, a = _step_1_served(tmp_path)
    with caplog.at_level("WARNING", logger="cluster.rollouts.analysis"):
        a.tick()
    (line,) = [r.getMessage() for r in caplog.records if "candidate weight 50%" in r.getMessage()]
    # why it went on: each measured gate's figure against its limit, and stable's (was "()")
    assert "the last window: " in line and " within " in line and "(stable " in line, line


def test_a_restart_resumes_the_step_and_runs_its_window_again(tmp_path):
    gw, clock, a = _step_1_served(tmp_path)
    a.tick()
    assert (a.state("m").state, a.state("m").step) == ("analysing", 1)  # step 2 (50 %) began at 11
    clock[0] = 15
    b = _analysis(tmp_path, gw, clock)  # a new process: reads the file
    b.tick()
    assert (b.state("m").state, b.state("m").step, b.state("m").window_start) == ("analysing", 1, 15)
    gw.serve("stable", 60)
    gw.serve("candidate", 60)
    clock[0] = 24  # 13 s after the step began, but 9 s after the restart: not yet
    b.tick()
    assert b.state("m").state == "analysing"
    clock[0] = 25.5
    b.tick()
    assert b.state("m").state == "promoted"


def test_a_state_of_another_candidate_is_not_taken_over(tmp_path):
    """$OWC_ROLLOUT_DIR kept across `owc serve` runs: the same config resumes where it was
    (a rolled-back candidate stays rolled back); a changed candidate or rollout is a new
    rollout, never the old one's state (an old `promoted` would put it at 100 % unanalysed)."""
    gw, clock = Gateway(), [0.0]
    a = _analysis(tmp_path, gw, clock)
    a.tick()
    gw.serve("stable", 60)
    gw.serve("candidate", 50, code="500")
    clock[0] = 11
    a.tick()
    assert a.state("m").state == "rolled_back"
    clock[0] = 20
    again = _analysis(tmp_path, gw, clock)  # the same config, restarted
    again.tick()
    assert (again.state("m").state, again.state("m").weight) == ("rolled_back", 0)
    promote = RolloutFiles(tmp_path).submit("m", "abort")
    again.tick()
    assert "has ended" in RolloutFiles(tmp_path).take_answer(promote)["error"]
    RolloutFiles(tmp_path).write("m", {**RolloutFiles(tmp_path).read("m"), "state": "promoted", "weight": 100})
    new = parse_config({"models": {"m": {"source": "x", "candidate": {"engine_kwargs": {"max_num_seqs": 4}},
                                         "rollout": {"steps": [20, 50], "step_s": 10, "conformance": False}}}})
    b = LocalAnalysis(new, RolloutFiles(tmp_path), scrape=lambda url: gw.text(), clock=lambda: clock[0])
    b.tick()
    st = RolloutFiles(tmp_path).read("m")
    assert (st["state"], st["step"], st["weight"], st["window_start"]) == ("analysing", 0, 20, 20)


def test_commands_are_answered(tmp_path):
    gw, clock = Gateway(), [0.0]
    a = _analysis(tmp_path, gw, clock)
    files = RolloutFiles(tmp_path)
    a.tick()
    pause = files.submit("m", "pause", "ops")
    again = files.submit("m", "pause", "ops")
    unknown = files.submit("nope", "abort")
    a.tick()
    assert files.take_answer(pause)["state"]["state"] == "paused"
    assert "already paused by an operator" in files.take_answer(again)["error"]
    assert "no rollout here" in files.take_answer(unknown)["error"]
    assert files.pending() == [] and files.read("m")["paused_by"] == "operator"


def _gated(tmp_path, conformance):
    cfg = parse_config({"models": {"m": {"source": "x", "candidate": {"source": "y"},
                                         "rollout": {"steps": [20], "step_s": 10}}}})  # conformance: true (default)
    files = RolloutFiles(tmp_path)
    return LocalAnalysis(cfg, files, scrape=lambda url: "", clock=lambda: 0.0, conformance=conformance), files


@pytest.mark.parametrize(("gate", "state", "weight", "reason"), [
    (lambda m: ["chat tool_choice auto", "responses tools"], "aborted", 0,
     "conformance failed: chat tool_choice auto, responses tools"),
    (lambda m: [], "analysing", 20, None),
    (lambda m: 1 / 0, "aborted", 0, "conformance failed: (not run: ZeroDivisionError"),
    (None, "analysing", 20, None),  # no gate where it runs: skipped, with a warning
])
def test_the_conformance_gate_comes_before_step_1(tmp_path, gate, state, weight, reason):
    a, files = _gated(tmp_path, gate)
    assert files.read("m") is None or files.read("m")["state"] == "pending"
    a.tick()
    doc = files.read("m")
    assert (doc["state"], doc["weight"]) == (state, weight)
    if reason:
        assert doc["reason"].startswith(reason)


def test_replica_urls_one_per_version():
    from cluster.discovery.endpoints import Endpoint
    from cluster.rollouts.conformance import replica_urls

    eps = [Endpoint("m", "a", "http://a", version="stable"), Endpoint("m", "b", "http://b", draining=True,
                                                                          version="candidate"),
           Endpoint("m", "c", "http://c", version="candidate"), Endpoint("o", "d", "http://d")]
    assert replica_urls(eps, "m") == {"stable": "http://a", "candidate": "http://c"}


def test_a_gateway_process_killed_mid_step_changes_nothing(tmp_path):
    """owc serve's analysis reads each gateway process's own counters. One killed mid-step (its
    /metrics refused) loses only what it served in that window; its replacement (a new process,
    a new metrics URL, counters from 0) counts from when it appeared: the step keeps its window,
    is neither skipped nor rolled back, and ends on time with the next step."""
    gws, dead = {"http://gw1": Gateway(), "http://gw2": Gateway()}, set()

    def scrape(url: str) -> str:
        if url in dead:
            raise ConnectionError(url)
        return gws[url].text()

    files, clock = RolloutFiles(tmp_path), [0.0]
    for url in gws:
        files.announce(url)
    a = LocalAnalysis(CFG, files, scrape=scrape, clock=lambda: clock[0])
    a.tick()  # step 1 (20 %) and its window's baseline
    for g in gws.values():
        g.serve("stable", 40)
        g.serve("candidate", 10)
    clock[0] = 5
    a.tick()
    dead.add("http://gw2")  # SIGKILLed: what it served in this window goes with it
    gws["http://gw3"] = Gateway()  # its replacement
    files.announce("http://gw3")
    for url in ("http://gw1", "http://gw3"):
        gws[url].serve("stable", 40)
        gws[url].serve("candidate", 20)
    clock[0] = 7
    a.tick()
    st = a.state("m")
    assert (st.state, st.step, st.weight, st.window_start) == ("analysing", 0, 20, 0.0)
    assert "http://gw2" not in files.gateways()  # its announcement is gone; gw1's and gw3's stay
    clock[0] = 10.5
    a.tick()
    st = a.state("m")
    assert (st.state, st.step, st.weight, st.window_start) == ("analysing", 1, 50, 10.5), st.reason
    assert st.gates and all(g.passed for g in st.gates), st.gates  # judged on gw1's and gw3's counts


def test_owc_serve_keeps_its_rollouts_beside_its_other_state(tmp_path):
    """`owc serve`'s rollout state outlives a restart (<batch.store_dir>/rollouts, as its Redis's
    data): a rolled-back candidate stays rolled back (the test above) instead of getting traffic
    again. A second `owc serve` on the same directory gets a directory of its run, and says so."""
    from cluster.local_stores import release, rollout_state_dir

    cfg = parse_config({"models": {"m": {"source": "x", "candidate": {"engine_kwargs": {"max_num_seqs": 4}}}},
                        "batch": {"store_dir": str(tmp_path / "batch")}})
    warned: list[str] = []
    first, lock = rollout_state_dir(cfg, str(tmp_path / "run1"), warned.append)
    assert (first, warned) == (tmp_path / "batch" / "rollouts", []) and lock is not None
    second, none = rollout_state_dir(cfg, str(tmp_path / "run2"), warned.append)
    assert (second, none) == (tmp_path / "run2" / "rollouts", None) and "start over" in warned[0]
    release(lock)  # the first one stopped: the next run resumes its rollouts
    again, lock = rollout_state_dir(cfg, str(tmp_path / "run3"), warned.append)
    assert again == first and lock is not None and len(warned) == 1
    release(lock)
