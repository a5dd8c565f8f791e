"""Live proof of the metric contract: `owc monitor` runs a real Prometheus with the shipped
config and rules against the session cluster; a scripted workload (200s, streams, a 404, a
400, a 429, a batch of two lines) runs; then every dashboard panel's expression and every
recording rule returns data, and the request counts in PromQL equal what the script sent."""

from __future__ import annotations

import collections
import re
import time

import httpx
import orjson
import pytest

from cluster.metrics.dashboards import DASHBOARDS, render
from cluster.metrics.monitor import rule_files
from tests.conftest import wait_for
from tests.integration.conftest import API_KEY
from tests.unit.test_dashboards import promql

pytestmark = pytest.mark.integration

# Panels whose metrics this cluster cannot move, and why.
EXEMPT = {
    "Accelerator utilisation": "DCGM GPU telemetry: no GPU on this machine",
    # The capacity test runs its controller inside the test process; nothing scrapes it.
    "Capacity controller: replica target": "no `owc controller` process in this session",
    "Capacity controller: decisions by reason": "no `owc controller` process in this session",
    "Capacity controller: holding, by reason": "no `owc controller` process in this session",
    # The session's tiny Llama does not reason (tests/unit/test_reasoning_tokens.py counts the metric).
    "Reasoning tokens/s by tenant": "no reasoning model in this session",
    # No model of the session has a candidate (tests/unit/test_rollout_gateway.py reads owc_rollout_* on fake engines).
    "Rollout: candidate weight and state": "no rollout in this session",
    "Rollout: gates, the candidate's share of each limit": "no rollout in this session",
}


def query(url: str, expr: str) -> list:
    r = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert r["status"] == "success", (expr, r)
    return r["data"]["result"]


def counts(url: str) -> collections.Counter:
    return collections.Counter({
        (s["metric"]["tenant"], s["metric"]["code"]): int(float(s["value"][1]))
        for s in query(url, "sum by (tenant, code) (owc_requests_total)")
    })


def workload(base: str) -> collections.Counter:
    sent: collections.Counter = collections.Counter()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=base, timeout=120) as c:
        def call(tenant_key, path, body, expect, stream=False):
            h = {"Authorization": f"Bearer {tenant_key}"}
            if stream:
                with c.stream("POST", path, json=body, headers=h) as r:
                    text = "".join(r.iter_text())
                    assert r.status_code == expect and "data: [DONE]" in text, text[-300:]
            else:
                r = c.post(path, json=body, headers=h)
                assert r.status_code == expect, r.text
            sent[("itest" if tenant_key == API_KEY else "limited", str(expect))] += 1

        chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Bonjour, comment ça va ?"}], "max_tokens": 16}
        for _ in range(3):
            call(API_KEY, "/v1/chat/completions", chat, 200)
        for model in ("tiny-llama", "tiny-llama-tp2"):
            call(API_KEY, "/v1/completions", {"model": model, "prompt": "Once upon a time", "max_tokens": 24,
                                              "stream": True, "ignore_eos": True}, 200, stream=True)
        call(API_KEY, "/v1/chat/completions", {**chat, "stream": True}, 200, stream=True)
        call(API_KEY, "/v1/chat/completions", {**chat, "model": "no-such-model"}, 404)
        call(API_KEY, "/v1/chat/completions", {**chat, "max_tokens": -1}, 400)
        call("sk-limited", "/v1/chat/completions", chat, 200)
        call("sk-limited", "/v1/chat/completions", chat, 429)
        assert c.get("/v1/models", headers=auth).status_code == 200
        batch(c, auth)
    return sent


def batch(c: httpx.Client, auth: dict) -> None:
    """A batch of two lines, run to completion: the Batch panels' series (its lines are not
    interactive requests: owc_requests_total does not count them)."""
    line = {"method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "tiny-llama", "max_tokens": 4, "messages": [{"role": "user", "content": "Salut"}]}}
    data = b"".join(orjson.dumps({"custom_id": f"obs{i}", **line}) + b"\n" for i in range(2))
    f = c.post("/v1/files", headers=auth, files={"file": ("obs.jsonl", data)}, data={"purpose": "batch"})
    assert f.status_code == 200, f.text
    b = c.post("/v1/batches", headers=auth, json={"input_file_id": f.json()["id"], "endpoint": line["url"],
                                                  "completion_window": "24h"})
    assert b.status_code == 200, b.text
    done = wait_for(lambda: (x := c.get(f"/v1/batches/{b.json()['id']}", headers=auth).json())["status"]
                    in ("completed", "failed") and x, 180, "the batch to complete", period_s=0.5)
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 2, done


def test_live_prometheus_sees_everything(cluster, prometheus):
    # Targets from the file-SD directory: the gateway process, both engines, Ray.
    def targets_up():
        active = httpx.get(prometheus + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        jobs = collections.Counter(t["labels"]["job"] for t in active if t["health"] == "up")
        return jobs if jobs["owc-gateway"] >= 1 and jobs["owc-engine"] >= 2 and jobs["ray"] >= 1 else None

    wait_for(targets_up, 60, "gateway, engine and Ray targets up", period_s=0.5)
    time.sleep(2)  # a scrape of the current state
    before = counts(prometheus)
    sent = workload(cluster.url)

    # Request counts in PromQL equal what was sent.
    def settled():
        now = counts(prometheus)
        delta = {k: now[k] - before.get(k, 0) for k in now if now[k] - before.get(k, 0)}
        return delta if delta == dict(sent) else None

    try:
        wait_for(settled, 20, "PromQL request counts to match the script", period_s=0.5)
    except AssertionError:
        now = counts(prometheus)
        raise AssertionError(f"sent {dict(sent)}, PromQL delta {dict(now - before)}") from None
    streamed = query(prometheus, 'sum(owc_time_to_first_token_seconds_count{model=~"tiny-llama.*"})')
    assert float(streamed[0]["value"][1]) >= 3
    assert query(prometheus, 'sum(owc_rejections_total{reason="rate_limit_exceeded"}) >= 1')
    # The session's tenancy store (a Redis `owc serve` started) answered throughout.
    assert query(prometheus, "min(owc_tenancy_store_up) == 1")
    assert query(prometheus, "sum(owc_tenancy_store_errors_total) == 0")

    # Every recording rule evaluates to data; every rule is healthy.
    time.sleep(3)  # rates need two samples after the workload
    groups = httpx.get(prometheus + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {g["file"].rsplit("/", 1)[-1] for g in groups} == {p.name for p in rule_files()}
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    empty = [r["name"] for r in rules if r["type"] == "recording" and not query(prometheus, r["name"])]
    assert not empty, f"recording rules without data: {empty}"

    # Every dashboard panel's every expression returns data.
    missing = []
    for d in DASHBOARDS:
        for p in render(d)["panels"]:
            if p["title"] in EXEMPT:
                continue
            for t in p["targets"]:
                if not query(prometheus, promql(t["expr"])):
                    missing.append(f"{d.uid} / {p['title']}: {t['expr']}")
    assert not missing, "panels without data:\n" + "\n".join(missing)
    assert set(EXEMPT) <= {p.title for d in DASHBOARDS for p in d.panels}
    assert re.search(r"tiny-llama", str(query(prometheus, "owc:ttft_seconds:p95")))
