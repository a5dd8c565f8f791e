"""Mirror mode through a gateway process with fake engines (docs/rollouts.md): every client is
answered by stable and told so; the candidate gets copies of the weight's share of the
requests, counted under version="candidate" in the owc_* metrics the gates read; a full queue
of pending copies drops copies (counted) and a candidate that hangs never slows a client; a
rollback stops the copies; the analysis promotes a healthy mirrored candidate, which then
answers every request."""

from __future__ import annotations

import time

import httpx
import pytest

from cluster.discovery.rollouts import RolloutFiles
from cluster.rollouts.analysis import LocalAnalysis, http_scrape as scrape
from tests.unit.rollout_helpers import Ticker, rollout_stack
from tests.conftest import fake_engine_argv, metric, wait_for

ENGINE_KEY = "engine-secret-for-mirror-tests"
MIRROR = {"mirror": True, "steps": [20, 50], "step_s": 5, "conformance": False,
          "gates": {"min_requests": 5, "min_delta_s": 1.0}}  # lenient: a shared CI machine's noise
HANG_S = 30  # the hanging candidate's time to first token: far beyond any client's patience here


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("mirror")
    cand = {"engine_kwargs": {"max_num_seqs": 64}}
    cfg = {"models": {"mir": {"source": "external", "candidate": cand, "rollout": MIRROR},
                      "hang": {"source": "external", "candidate": cand, "rollout": {**MIRROR, "mirror_queue": 3}},
                      "prom": {"source": "external", "candidate": cand, "rollout": MIRROR}},
           "model_cache_dir": str(d), "gateway": {"api_keys_env": None, "admin_keys_env": None}}
    env = {"OWC_ENGINE_KEY": ENGINE_KEY, "OWC_ROLLOUT_DIR": str(d / "rollouts")}
    engines = {(m, v): fake_engine_argv(m) for m in ("mir", "hang", "prom") for v in ("stable", "candidate")}
    engines[("hang", "candidate")] = fake_engine_argv("hang", ttft_ms=HANG_S * 1000)
    with rollout_stack(d, cfg, engines, env) as stack:
        yield stack


def weigh(files: RolloutFiles, model: str, weight: float, state: str = "analysing") -> None:
    """The state as the analysis would write it; the gateway re-reads it within 0.5 s."""
    files.write(model, {"model": model, "state": state, "step": 0, "weight": weight, "steps": [20, 50]})
    time.sleep(1.0)


def ask(url: str, model: str, *, stream: bool = True, session: str | None = None) -> tuple[int, str | None, str, float]:
    """(status, x-owc-version, the answer's text, seconds) of one greedy request."""
    headers = {"x-session-id": session} if session else {}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": stream,
            "temperature": 0}
    t0 = time.perf_counter()
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
        text = r.read().decode()
    return r.status_code, r.headers.get("x-owc-version"), text, time.perf_counter() - t0


def served(procs, model: str) -> dict[str, float]:
    return {v: metric(procs[(model, v)].url, "owc_fake_generation_requests_total") for v in ("stable", "candidate")}


def candidate_metrics(gw, model: str) -> dict[str, float]:
    return {"requests": metric(gw.metrics_url, "owc_requests_total", model=model, version="candidate"),
            "ttft": metric(gw.metrics_url, "owc_time_to_first_token_seconds_count", model=model, version="candidate"),
            "tokens": metric(gw.metrics_url, "owc_completion_tokens_total", model=model, version="candidate")}


def test_clients_get_stable_and_the_candidate_gets_copies(stack):
    gw, procs, files, _ = stack
    weigh(files, "mir", 50)
    before, seen = served(procs, "mir"), candidate_metrics(gw, "mir")
    answers = [ask(gw.url, "mir", stream=i % 4 != 0) for i in range(40)]
    assert {(s, v) for s, v, _, _ in answers} == {(200, "stable")}
    mid = served(procs, "mir")
    assert mid["stable"] - before["stable"] == 40  # every client answer came from stable
    # The copies finish off the client's path: wait until the gateway settled what the candidate served.
    copies = wait_for(lambda: (n := served(procs, "mir")["candidate"] - before["candidate"]) and
                      candidate_metrics(gw, "mir")["requests"] - seen["requests"] == n and n, 10, "the copies to settle")
    assert 8 <= copies <= 32, copies  # ~half of 40 (a binomial draw: 4.4 standard deviations either side)
    after = candidate_metrics(gw, "mir")
    assert after["ttft"] - seen["ttft"] >= 1 and after["tokens"] > seen["tokens"]  # what the gates compare
    assert metric(gw.metrics_url, "owc_requests_total", model="mir", version="stable") >= 40
    assert metric(gw.metrics_url, "owc_rollout_mirror_dropped_total", model="mir") == 0


def test_a_session_is_copied_all_or_nothing(stack):
    gw, procs, files, _ = stack
    weigh(files, "mir", 50)
    for session in ("alice", "bob", "carol", "dave"):
        before = served(procs, "mir")["candidate"]
        assert {ask(gw.url, "mir", session=session)[1] for _ in range(4)} == {"stable"}
        time.sleep(0.5)  # the copies end off the client's path
        n = served(procs, "mir")["candidate"] - before
        assert n in (0, 4), (session, n)


def test_a_hanging_candidate_never_slows_a_client_and_a_full_queue_drops(stack):
    gw, procs, files, _ = stack
    weigh(files, "hang", 99)
    baseline = [ask(gw.url, "mir")[3] for _ in range(5)]  # "mir" at 50 %: a healthy candidate's copies
    answers = [ask(gw.url, "hang", stream=i % 2 == 0) for i in range(30)]
    assert {(s, v) for s, v, _, _ in answers} == {(200, "stable")}
    # The candidate answers after HANG_S seconds: a client that waited for a copy would take as long.
    assert max(t for *_, t in answers) < 2.0, sorted(t for *_, t in answers)[-5:]
    assert sorted(t for *_, t in answers)[15] < max(baseline) + 0.5
    dropped = metric(gw.metrics_url, "owc_rollout_mirror_dropped_total", model="hang")
    assert 20 <= dropped <= 27, dropped  # ~29.7 copies due, 3 pending at once: the rest dropped
    assert metric(procs[("hang", "candidate")].url, "owc_fake_generation_requests_total") <= 3
    assert candidate_metrics(gw, "hang")["requests"] == 0  # the 3 pending ones have not ended
    assert served(procs, "hang")["stable"] >= 30


def test_a_rollback_stops_the_copies(stack):
    gw, procs, files, _ = stack
    weigh(files, "mir", 0, state="rolled_back")
    time.sleep(0.5)  # copies sent before the rollback finish
    before = served(procs, "mir")
    assert {ask(gw.url, "mir")[1] for _ in range(20)} == {"stable"}
    time.sleep(0.5)
    after = served(procs, "mir")
    assert (after["stable"] - before["stable"], after["candidate"] - before["candidate"]) == (20, 0)


def test_a_mirrored_candidate_is_analysed_on_its_copies_and_promoted(stack):
    gw, procs, files, cfg = stack
    only = cfg.model_copy(update={"models": {"prom": cfg.models["prom"]}})
    before = served(procs, "prom")
    answers: list[tuple[str | None, int]] = []  # (version, the weight then)
    with Ticker(LocalAnalysis(only, files, scrape=scrape)):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            doc = files.read("prom") or {}
            if doc.get("state") in ("promoted", "rolled_back", "aborted"):
                break
            status, version, _, _ = ask(gw.url, "prom")
            assert status == 200
            if (files.read("prom") or {}).get("state") == "promoted":
                break  # promoted while this request ran: the gateway may have sent it to the candidate already
            answers.append((version, doc.get("weight")))
    doc = files.read("prom")
    assert doc["state"] == "promoted", doc
    assert {v for v, _ in answers} == {"stable"}  # every answer before the promotion came from stable
    assert {w for _, w in answers} >= {20, 50}
    gates = {g["name"]: g for g in doc["gates"]}
    assert gates["max_ttft_p95_ratio"]["passed"] is True  # measured on the copies
    assert served(procs, "prom")["candidate"] > before["candidate"]
    time.sleep(1.0)  # the gateway's next read of the state
    assert {ask(gw.url, "prom")[1] for _ in range(5)} == {"candidate"}  # promoted: the candidate answers everyone
