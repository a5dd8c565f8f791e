"""Tenancy across gateway replicas on a real Redis (redis-server started here): limits that
hold across 1, 2 and 3 gateways, tokens charged before the work and settled with the
engine's usage, daily quotas that survive restarts, and each on_failure mode with Redis
stopped mid-run (loadtests.tenancy_limits holds the helpers and the benchmark)."""

from __future__ import annotations

import datetime as dt
import shutil
import time

import httpx
import pytest
import redis as redis_py

from loadtests.tenancy_limits import KEY, MODEL, TENANT, Redis, Stack, body, limits_stack, measure, write_config
from tests.conftest import metric, wait_for

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed (make tools)")
T = 6.0
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def redis():
    r = Redis().start()
    yield r
    r.stop()


def _post(url: str, payload: dict) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=payload, headers=AUTH, timeout=30)


@pytest.mark.parametrize("kind, gateways", [("requests", (1, 2, 3)), ("tokens", (1, 3))])
def test_limits_hold_across_gateway_replicas(redis, tmp_path, kind, gateways):
    # One engine and max(gateways) gateway processes for all of this kind's runs, each run
    # through the first n of them (its tenancy state reset first): not one stack per run.
    stack = limits_stack(max(gateways), kind=kind, redis=redis, tmp=tmp_path)
    try:
        runs = {n: measure(n, kind=kind, seconds=T, redis=redis, tmp=tmp_path, stack=stack) for n in gateways}
    finally:
        stack.stop()
    one = runs[1]
    assert abs(one["count"] - one["expected"]) <= 0.15 * one["expected"], one
    for n, run in runs.items():
        assert set(run["statuses"]) <= {"200", "429"}, run
        assert abs(run["count"] - one["count"]) <= 0.10 * one["count"], (n, run, one)


def _fake_served(stack: Stack) -> float:
    return metric(stack.engine.url, "owc_fake_generation_requests_total")


def test_tokens_are_reserved_before_the_work_and_settled_with_the_engines_usage(redis, tmp_path):
    redis.flush()
    cfg = write_config(tmp_path / "owc.yaml", tenant={"tokens_per_minute": 600}, store_url=redis.url)
    stack = Stack(1, cfg, log_dir=tmp_path, itl_ms=20).start()
    try:
        url = stack.urls[0]
        before = _fake_served(stack)
        r = _post(url, body(max_tokens=700))  # a reservation above the whole limit
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert r.headers["x-ratelimit-limit-tokens"] == "600"
        # no wait admits it (more than the whole bucket): no Retry-After, and SDKs are told not to retry
        assert "retry-after" not in r.headers and r.headers["x-should-retry"] == "false"
        assert _fake_served(stack) == before  # refused before any engine saw it
        long_words = {**body(max_tokens=20), "messages": [{"role": "user", "content": "abcdefghijklmnopqrstuvwxyz " * 8}]}
        r1 = _post(url, long_words)  # estimated 54 prompt tokens (bytes / 4); the engine counts 11
        assert r1.status_code == 200
        reserved = 600 - int(r1.headers["x-ratelimit-remaining-tokens"])
        used = r1.json()["usage"]["total_tokens"]
        assert reserved - used >= 40  # refunded at settlement
        r2 = _post(url, {**long_words, "max_tokens": 30})  # remaining: 600 - r1's real usage - this reservation
        assert r2.status_code == 200, r2.text
        remaining = int(r2.headers["x-ratelimit-remaining-tokens"])
        assert 0 <= remaining - (600 - used - (reserved + 10)) <= 10, (remaining, used, reserved)  # + the refill
        assert r2.headers["x-ratelimit-reset-tokens"].endswith("s")
        # A disconnected stream is settled: a lease-free usage record for what was received.
        with httpx.stream("POST", url + "/v1/chat/completions", json=body(max_tokens=150, stream=True),
                          headers=AUTH, timeout=30) as s:
            for i, _ in enumerate(s.iter_lines()):
                if i >= 6:
                    break
        client = redis_py.Redis(port=redis.port, decode_responses=True)
        key = f"owc:u:{dt.datetime.now(dt.timezone.utc).date().isoformat()}:{TENANT}:{MODEL}"
        wait_for(lambda: client.hget(key, "requests") == "3", 10, "the disconnected stream's settlement")
        completion = int(client.hget(key, "completion_tokens"))
        assert 20 + 30 < completion < 20 + 30 + 150
    finally:
        stack.stop()


def test_a_daily_quota_is_exhausted_with_its_reset_and_survives_restarts(redis, tmp_path):
    redis.flush()
    cfg = write_config(tmp_path / "owc.yaml", tenant={"daily_tokens": 200}, store_url=redis.url, replicas=2)
    stack = Stack(2, cfg, log_dir=tmp_path).start()
    try:
        statuses = [_post(stack.urls[i % 2], body()) for i in range(12)]
        assert {r.status_code for r in statuses} == {200, 429}
        refused = statuses[-1]
        err = refused.json()["error"]
        assert err["code"] == "insufficient_quota" and err["type"] == "insufficient_quota"
        now = dt.datetime.now(dt.timezone.utc)
        midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
        assert midnight.strftime("%Y-%m-%dT%H:%M:%SZ") in err["message"]
        assert abs(int(refused.headers["retry-after"]) - (midnight - now).total_seconds()) <= 5
        stack.stop_gateways()
        stack.start_gateways()
        for url in stack.urls:
            assert _post(url, body()).json()["error"]["code"] == "insufficient_quota"
        assert metric(stack.metrics_urls[0], "owc_tenant_quota_used_ratio", tenant=TENANT, period="day") >= 0.9
        rows = _usage("--store-url", redis.url, "--tenant", TENANT, "--format", "json")
        assert len(rows) == 1 and rows[0]["model"] == MODEL and 5 <= rows[0]["requests"] <= 8
        assert rows[0]["prompt_tokens"] > 0 and rows[0]["completion_tokens"] == 16 * rows[0]["requests"]
        table = _usage("--store-url", redis.url, "--format", "table", raw=True)
        assert table.splitlines()[0].split()[:3] == ["day", "tenant", "model"] and "total" in table
    finally:
        stack.stop()


@pytest.mark.parametrize("mode, accepted", [("open", 8), ("closed", 0), ("local", 3)])
def test_store_failure_follows_on_failure_and_limits_resume(tmp_path, mode, accepted):
    own = Redis().start()
    cfg = write_config(tmp_path / "owc.yaml", tenant={"requests_per_minute": 6, "burst": 3}, store_url=own.url,
                       on_failure=mode)
    stack = Stack(1, cfg, log_dir=tmp_path).start()
    try:
        url, murl = stack.urls[0], stack.metrics_urls[0]
        assert [_post(url, body()).status_code for _ in range(4)] == [200, 200, 200, 429]
        own.stop()
        got = [_post(url, body()) for _ in range(8)]
        assert all(r.status_code in (200, 429) for r in got)
        assert sum(r.status_code == 200 for r in got) == accepted
        if mode == "closed":
            assert got[0].json()["error"]["code"] == "tenancy_store_unavailable"
        assert metric(murl, "owc_tenancy_store_errors_total") >= 1
        assert metric(murl, "owc_tenancy_store_up") == 0
        back = Redis(own.port).start()  # empty again: the limits start over, shared
        time.sleep(1.1)  # the store is retried once a second
        again = [_post(url, body()).status_code for _ in range(4)]
        assert again == [200, 200, 200, 429], again
        assert metric(murl, "owc_tenancy_store_up") == 1
    finally:
        stack.stop()
        own.stop()
        if "back" in locals():
            back.stop()


def _usage(*args: str, raw: bool = False):
    import json

    from typer.testing import CliRunner

    from cluster.cli import app

    r = CliRunner().invoke(app, ["usage", *args])
    assert r.exit_code == 0, r.output
    return r.output if raw else json.loads(r.output)
