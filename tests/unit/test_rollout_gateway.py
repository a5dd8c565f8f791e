"""Rollouts through a gateway process with fake engines (docs/rollouts.md): the version is
picked first (by weight; sticky by session), every answer says which (`x-owc-version`), the
owc_* metrics carry it; the analysis (cluster.rollouts.analysis, run here as `owc serve`
runs it) reads the gateway's own metrics and promotes a healthy candidate step by step,
rolls a slow one back, pauses on no data; the admin API reads and commands it."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from cluster.gateway.auth.keys import hash_key
from cluster.rollouts.analysis import LocalAnalysis, http_scrape as scrape
from tests.unit.rollout_helpers import Ticker, rollout_stack
from tests.conftest import fake_engine_argv, metric, wait_for

ENGINE_KEY = "engine-secret-for-rollout-tests"
TENANT, ADMIN = "Bearer sk-t", "Bearer sk-admin"
ROLLOUT = {"steps": [20, 50], "step_s": 5, "conformance": False, "gates": {"min_requests": 5}}
# The healthy candidate's gates allow a shared CI machine's noise (fake engines answer in ms;
# a busy machine adds 100s of ms to either version's p95); the slow one is 400 ms slower.
LENIENT = {**ROLLOUT, "gates": {"min_requests": 5, "min_delta_s": 1.0}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("rollout")
    (d / "keys.yaml").write_text(yaml.safe_dump({hash_key("sk-t"): "t"}))
    (d / "admin.yaml").write_text(yaml.safe_dump({hash_key("sk-admin"): "ops"}))
    cfg = {"models": {"fast": {"source": "external", "candidate": {"engine_kwargs": {"max_num_seqs": 64}}, "rollout": LENIENT,
                               "aliases": ["f"]},
                      "slow": {"source": "external", "candidate": {"engine_kwargs": {"max_num_seqs": 1}}, "rollout": ROLLOUT},
                      "plain": {"source": "external"}},
           "model_cache_dir": str(d),
           "gateway": {"api_keys_env": None, "admin_keys_env": None, "api_keys_file": str(d / "keys.yaml"),
                       "admin_keys_file": str(d / "admin.yaml"), "access_log": {"path": str(d / "access.log")}}}
    env = {"OWC_ENGINE_KEY": ENGINE_KEY, "OWC_ROLLOUT_DIR": str(d / "rollouts")}
    engines = {("fast", "stable"): fake_engine_argv("fast"), ("fast", "candidate"): fake_engine_argv("fast"),
               ("slow", "stable"): fake_engine_argv("slow"),
               ("slow", "candidate"): fake_engine_argv("slow", ttft_ms=400),
               ("plain", "stable"): fake_engine_argv("plain")}
    with rollout_stack(d, cfg, engines, env) as stack:
        yield stack


@pytest.fixture(scope="module")
def analysis(stack):
    _, _, files, cfg = stack
    with Ticker(LocalAnalysis(cfg, files, scrape=scrape)) as a:
        yield a


def chat(url: str, model: str, *, stream: bool = True, session: str | None = None) -> tuple[int, str | None]:
    headers = {"Authorization": TENANT, **({"x-session-id": session} if session else {})}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": stream}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
        r.read()
        return r.status_code, r.headers.get("x-owc-version")


def served(procs, model: str) -> dict[str, float]:
    return {v: metric(procs[(model, v)].url, "owc_fake_generation_requests_total") for v in ("stable", "candidate")}


def test_before_any_analysis_every_answer_is_stable_and_says_so(stack):
    gw, procs, _, _ = stack
    before = served(procs, "fast")
    answers = [chat(gw.url, "fast", stream=s) for s in (True, False) * 5]
    assert answers == [(200, "stable")] * 10
    assert served(procs, "fast")["candidate"] == before["candidate"]
    assert chat(gw.url, "plain") == (200, None)  # a model without a candidate: no version header
    assert metric(gw.metrics_url, "owc_requests_total", model="fast", version="stable") >= 10


def test_admin_api_reads_and_commands_the_analysis(stack, analysis):
    gw, _, _, _ = stack
    url = gw.url + "/admin/v1/models/fast/rollout"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": TENANT}).status_code == 403
    doc = wait_for(lambda: (r := httpx.get(url, headers={"Authorization": ADMIN}).json())["state"] == "analysing" and r,
                   10, "the analysis to start step 1")
    assert (doc["step"], doc["weight"], doc["steps"]) == (0, 20, [20, 50])
    by_alias = httpx.get(gw.url + "/admin/v1/models/f/rollout", headers={"Authorization": ADMIN}).json()
    assert (by_alias["model"], by_alias["step"]) == ("fast", 0)  # an alias names its model's rollout
    r = httpx.post(url + "/pause", headers={"Authorization": ADMIN}, timeout=10)
    assert r.status_code == 200 and (r.json()["state"], r.json()["reason"]) == ("paused", "paused by an operator")
    r = httpx.post(url + "/pause", headers={"Authorization": ADMIN}, timeout=10)
    assert r.status_code == 409 and r.json()["error"]["code"] == "rollout_command_refused"
    r = httpx.post(url + "/resume", headers={"Authorization": ADMIN}, timeout=10)
    assert r.status_code == 200 and r.json()["state"] == "analysing"
    assert httpx.post(url + "/explode", headers={"Authorization": ADMIN}).status_code == 404
    r = httpx.get(gw.url + "/admin/v1/models/plain/rollout", headers={"Authorization": ADMIN})
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_rollout"
    assert httpx.get(gw.url + "/admin/v1/models/nope/rollout", headers={"Authorization": ADMIN}).status_code == 404
    # No traffic for a whole window: the step pauses, it never goes on without data.
    doc = wait_for(lambda: (r := httpx.get(url, headers={"Authorization": ADMIN}).json())["state"] == "paused" and r,
                   10, "a window without data to pause the step")
    assert doc["paused_by"] == "no_data" and "served no request" in doc["reason"] and doc["weight"] == 20


def _load(url: str, model: str, until, *, workers: int = 4, timeout_s: float = 40) -> list[tuple[int, str | None, float]]:
    """Streamed requests from ``workers`` clients until ``until()``: (status, version, weight then)."""
    out: list[tuple[int, str | None, float]] = []
    deadline = time.monotonic() + timeout_s

    def client() -> None:
        while not until() and time.monotonic() < deadline:
            status, version = chat(url, model)
            out.append((status, version, time.monotonic()))

    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(client) for _ in range(workers)]:
            f.result()
    return out


def test_a_healthy_candidate_is_promoted_step_by_step(stack, analysis):
    gw, procs, files, _ = stack
    weights: list[tuple[float, int]] = []
    # The 4 load threads all ask: a read and its record under one lock, or a thread holding an
    # older read records it after a newer one (CI once saw 20, 50, 20, 50, 100 that way).
    lock = threading.Lock()

    def promoted() -> bool:
        with lock:
            doc = files.read("fast")
            if doc is None:
                return False
            if not weights or weights[-1][1] != doc.get("weight"):
                weights.append((time.monotonic(), doc.get("weight")))
            return doc.get("state") in ("promoted", "rolled_back", "aborted")

    before = served(procs, "fast")
    answers = _load(gw.url, "fast", promoted)
    doc = files.read("fast")
    assert doc["state"] == "promoted", doc
    assert [w for _, w in weights if w] == [20, 50, 100], weights  # resumed from the no-data pause, then each step
    assert all(s == 200 for s, _, _ in answers), {s for s, _, _ in answers}
    after = served(procs, "fast")
    n_candidate = sum(v == "candidate" for _, v, _ in answers)
    assert after["candidate"] - before["candidate"] == n_candidate  # the header says who answered
    assert {g["name"]: g["passed"] for g in doc["gates"]}["max_error_rate_ratio"] is True
    # Each step's share near its weight: within 3.5 standard deviations of a binomial draw (a
    # shared CI machine sends a few dozen to a few hundred requests per 5-s step here).
    for (t0, w), (t1, _) in zip(weights, weights[1:]):
        if w in (20, 50):
            step = [v for _, v, t in answers if t0 + 0.6 < t < t1]  # the gateway re-reads the weight every 0.5 s
            share = 100 * sum(v == "candidate" for v in step) / max(len(step), 1)
            sigma = 100 * math.sqrt(w / 100 * (1 - w / 100) / max(len(step), 1))
            assert len(step) >= 20 and abs(share - w) < 3.5 * sigma, (w, len(step), share)
    time.sleep(0.6)  # the gateway's next read of the state (every 0.5 s)
    assert {chat(gw.url, "fast")[1] for _ in range(5)} == {"candidate"}  # promoted: 100 %
    assert metric(gw.metrics_url, "owc_requests_total", model="fast", version="candidate") >= n_candidate


def test_a_session_keeps_its_version(stack, analysis):
    gw, _, files, _ = stack
    wait_for(lambda: (files.read("slow") or {}).get("state") in ("analysing", "paused"), 10, "slow's rollout")
    for s in ("alice", "bob", "carol", "dave"):
        assert len({chat(gw.url, "slow", session=s)[1] for _ in range(6)}) == 1


def test_a_slow_candidate_is_rolled_back_and_stable_serves_on(stack, analysis):
    gw, _, files, _ = stack
    ended = lambda: (files.read("slow") or {}).get("state") in ("promoted", "rolled_back", "aborted")  # noqa: E731
    answers = _load(gw.url, "slow", ended)
    doc = files.read("slow")
    assert doc["state"] == "rolled_back" and doc["weight"] == 0, doc
    assert "TTFT p95" in doc["reason"]
    assert all(s == 200 for s, _, _ in answers)
    time.sleep(0.6)  # the gateway's next read of the state
    assert {chat(gw.url, "slow")[1] for _ in range(10)} == {"stable"}
    # What OwcRolloutRolledBack and the Rollout panel read, from the state this process routes by.
    assert metric(gw.metrics_url, "owc_rollout_state", model="slow", state="rolled_back") == 1
    assert metric(gw.metrics_url, "owc_rollout_state", model="slow", state="analysing") == 0
    assert metric(gw.metrics_url, "owc_rollout_candidate_weight", model="slow") == 0
    assert metric(gw.metrics_url, "owc_rollout_candidate_weight", model="fast") == 100
    # The gate that rolled it back, against its limit, as the analysis' last window had it.
    ttft = {g["name"]: g for g in doc["gates"]}["max_ttft_p95_ratio"]
    assert metric(gw.metrics_url, "owc_rollout_gate_passed", model="slow", gate="max_ttft_p95_ratio") == 0
    for of in ("stable", "candidate", "limit"):
        assert metric(gw.metrics_url, "owc_rollout_gate", model="slow", gate="max_ttft_p95_ratio", of=of) == \
            pytest.approx(ttft[of])
    assert ttft["candidate"] > ttft["limit"]
    r = httpx.post(gw.url + "/admin/v1/models/slow/rollout/resume", headers={"Authorization": ADMIN}, timeout=10)
    assert r.status_code == 409 and "has ended" in r.json()["error"]["message"]


def test_fuzzed_rollout_paths_never_fail_the_gateway(stack, analysis):
    """The admin rollout routes' path parameters (model, action), generated: never a 5xx, always
    OpenAI-shaped (after the rollouts above ended, so commands on them are refused)."""
    from urllib.parse import quote

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    gw, _, _, _ = stack
    client = httpx.Client(base_url=gw.url, headers={"Authorization": ADMIN}, timeout=10)
    models = st.one_of(st.sampled_from(["slow", "fast", "plain", "nope", "slow/x", ""]), st.text(max_size=40))
    actions = st.one_of(st.sampled_from(["promote", "abort", "pause", "resume", "", "x"]), st.text(max_size=20))
    seen: dict[int, int] = {}

    @settings(max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(model=models, action=actions, post=st.booleans())
    def one(model, action, post):
        path = f"/admin/v1/models/{quote(model, safe='/')}/rollout" + (f"/{quote(action, safe='')}" if post else "")
        r = client.post(path) if post else client.get(path)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (path, r.status_code, r.text)
        if r.status_code >= 400:
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}

    try:
        one()
    finally:
        client.close()
    assert seen.get(404) and seen.get(409), seen


def test_the_cli_over_the_admin_api(stack, analysis):
    import json

    from typer.testing import CliRunner

    from cluster.cli import app

    gw, _, _, _ = stack
    run = lambda *a: CliRunner().invoke(app, ["rollout", *a, "--url", gw.url, "--api-key", "sk-admin"])  # noqa: E731
    r = run("status", "fast", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert (doc["state"], doc["weight"]) == ("promoted", 100)
    r = run("status", "slow")
    assert r.exit_code == 0 and "rolled_back" in r.output and "max_ttft_p95_ratio: FAIL" in r.output, r.output
    r = run("abort", "slow")
    assert r.exit_code == 1 and "409" in r.output and "has ended" in r.output
    r = run("status", "plain")
    assert r.exit_code == 1 and "404" in r.output
