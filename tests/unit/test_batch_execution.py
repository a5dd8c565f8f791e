"""Batches that run, through gateway processes on a fake engine, driven by the official `openai`
SDK: upload, create, poll to completion, download the output and error files (OpenAI's line
format; an unknown model, a streamed line and a model outside the tenant's allow-list in the
error file with their status and OpenAI error body); /v1/completions and /v1/responses batches
too; a tenant over its batch_daily_tokens gets
its remaining lines in the error file (429 insufficient_quota); the access log names the batch
and the custom_id; owc_batch_* metrics; a cancel in progress ends with partial output. Then two gateway processes over one Redis (as `owc serve` runs
them) with a tenancy store: the process holding lines is SIGKILLed mid-batch, the other takes
its lines once their leases expire, and the batch completes with one output line per custom_id
and one usage record per line (none charged twice)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import openai
import orjson
import pytest
import yaml

from cluster.gateway.auth.keys import hash_key
from cluster.process import free_port
from cluster.tenancy.local_redis import LocalRedis
from cluster.tenancy.redis_store import RedisStore
from tests.conftest import fake_engine_argv, gateway_argv, server, wait_for

CHAT = "/v1/chat/completions"
KEYS = {"sk-alpha": "alpha", "sk-beta": "beta"}


def line(cid: str, model: str = "m1", **extra) -> bytes:
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": CHAT,
                         "body": {"model": model, "messages": [{"role": "user", "content": cid}], "max_tokens": 4,
                                  **extra}}) + b"\n"


def sdk(proc, key="sk-alpha") -> openai.OpenAI:
    return openai.OpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0)


def finished(c: openai.OpenAI, batch_id: str, timeout_s: float = 60):
    return wait_for(lambda: (b := c.batches.retrieve(batch_id)).status in ("completed", "failed", "expired",
                                                                        "cancelled") and b, timeout_s,
                    f"batch {batch_id} to finish")


def rows(c: openai.OpenAI, file_id: str | None) -> list[dict]:
    return [] if file_id is None else [orjson.loads(x) for x in c.files.content(file_id).content.splitlines()]


def write_config(d, cfg) -> str:
    (d / "keys.yaml").write_text(yaml.safe_dump({hash_key(k): t for k, t in KEYS.items()}))
    base = {"models": {"m1": {"source": "external"}, "m2": {"source": "external"}},
            "gateway": {"api_keys_env": None, "admin_keys_env": None, "api_keys_file": str(d / "keys.yaml"),
                        "access_log": {"enabled": True, "path": str(d / "access.log")},
                        "tenants": {"alpha": {"models": ["m1"]},
                                    "beta": {"batch_daily_tokens": 20, "requests_per_minute": 1}}}}
    for k, v in cfg.items():
        base[k] = {**base.get(k, {}), **v}
    (d / "owc.yaml").write_text(yaml.safe_dump(base))
    return str(d / "owc.yaml")


def test_sdk_batch_runs_to_completion_with_output_and_error_files(tmp_path):
    config = write_config(tmp_path, {"batch": {"store_dir": str(tmp_path / "store"), "poll_period_s": 0.1}})
    with server(fake_engine_argv("m1")) as m1, server(fake_engine_argv("m2")) as m2, \
            server(gateway_argv(f"m1={m1.url}", f"m2={m2.url}", config=config)) as gw:
        c = sdk(gw)
        data = b"".join(line(f"ok-{i}") for i in range(5)) + line("unknown", "nope") + \
            line("streamed", stream=True) + line("not-allowed", "m2")
        f = c.files.create(file=("in.jsonl", data), purpose="batch")
        b = c.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
        done = finished(c, b.id)
        assert done.status == "completed", done
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (8, 5, 3)
        assert done.in_progress_at and done.finalizing_at and done.completed_at
        out, err = rows(c, done.output_file_id), rows(c, done.error_file_id)
        assert [r["custom_id"] for r in out] == [f"ok-{i}" for i in range(5)]
        first = out[0]
        assert set(first) == {"id", "custom_id", "response", "error"} and first["error"] is None
        assert first["response"]["status_code"] == 200 and first["response"]["body"]["object"] == "chat.completion"
        assert first["response"]["body"]["usage"]["completion_tokens"] > 0 and first["response"]["request_id"]
        by_id = {r["custom_id"]: r["response"] for r in err}
        assert (by_id["unknown"]["status_code"], by_id["unknown"]["body"]["error"]["code"]) == (404, "model_not_found")
        assert by_id["streamed"]["status_code"] == 400 and by_id["streamed"]["body"]["error"]["param"] == "stream"
        assert (by_id["not-allowed"]["status_code"], by_id["not-allowed"]["body"]["error"]["code"]) == \
            (403, "permission_denied")
        # A line refused by admission names its request too (the error file's request_id is the access log's).
        logged = {r.get("custom_id"): r["request_id"] for r in (orjson.loads(x) for x in
                                                                 (tmp_path / "access.log").read_bytes().splitlines())}
        assert all(by_id[cid]["request_id"] == logged[cid] != "" for cid in ("unknown", "streamed", "not-allowed")), \
            (by_id, logged)
        out_file = c.files.retrieve(done.output_file_id)
        assert out_file.purpose == "batch_output" and out_file.bytes == len(c.files.content(out_file.id).content)
        log = [orjson.loads(x) for x in (tmp_path / "access.log").read_bytes().splitlines()]
        mine = [r for r in log if r.get("batch_id") == b.id]
        assert sorted(r["custom_id"] for r in mine if r["status"] == 200) == [f"ok-{i}" for i in range(5)]
        assert all(r["tenant"] == "alpha" for r in mine)
        metrics = httpx.get(gw.metrics_url + "/metrics").text
        assert 'owc_batch_lines_total{outcome="ok",tenant="alpha"} 5.0' in metrics
        assert 'owc_batch_lines_total{outcome="error",tenant="alpha"} 3.0' in metrics
        assert 'owc_batch_closed_total{status="completed"} 1.0' in metrics
        # The other endpoints: /v1/completions and /v1/responses lines.
        for url, body in (("/v1/completions", {"model": "m1", "prompt": "hi", "max_tokens": 4}),
                          ("/v1/responses", {"model": "m1", "input": "hi", "max_output_tokens": 16})):
            data = b"".join(orjson.dumps({"custom_id": f"e{i}", "method": "POST", "url": url, "body": body}) + b"\n"
                            for i in range(2))
            fe = c.files.create(file=("e.jsonl", data), purpose="batch")
            be = finished(c, c.batches.create(input_file_id=fe.id, endpoint=url, completion_window="24h").id)
            got = rows(c, be.output_file_id)
            assert be.status == "completed" and [r["response"]["status_code"] for r in got] == [200, 200], (url, be)
            assert got[0]["response"]["body"]["object"] == {"/v1/completions": "text_completion"}.get(url, "response")
        # Over its batch_daily_tokens: the remaining lines in the error file (429 insufficient_quota), the
        # batch still completes; its requests_per_minute of 1 does not apply to batch lines.
        beta = sdk(gw, "sk-beta")
        fb = beta.files.create(file=("q.jsonl", b"".join(line(f"q{i}") for i in range(6))), purpose="batch")
        quota = finished(beta, beta.batches.create(input_file_id=fb.id, endpoint=CHAT, completion_window="24h").id)
        assert quota.status == "completed" and quota.request_counts.completed >= 1 and quota.request_counts.failed >= 1
        refused = rows(beta, quota.error_file_id)
        assert {(r["response"]["status_code"], r["response"]["body"]["error"]["code"]) for r in refused} == \
            {(429, "insufficient_quota")}
        assert "daily batch quota of 20 tokens" in refused[0]["response"]["body"]["error"]["message"]
        # Cancel a batch in progress: partial output, then cancelled.
        big = c.files.create(file=("big.jsonl", b"".join(line(f"c{i}") for i in range(400))), purpose="batch")
        b2 = c.batches.create(input_file_id=big.id, endpoint=CHAT, completion_window="24h")
        wait_for(lambda: c.batches.retrieve(b2.id).status == "in_progress", 20, "the batch to start")
        assert c.batches.cancel(b2.id).status in ("cancelling", "cancelled")
        gone = finished(c, b2.id)
        assert gone.status == "cancelled" and gone.cancelled_at
        assert len(rows(c, gone.output_file_id)) == gone.request_counts.completed < 400
        # every line not run in the error file, named: nothing lost silently
        unrun = [r for r in rows(c, gone.error_file_id) if (r["error"] or {}).get("code") == "batch_cancelled"]
        assert len(unrun) == 400 - gone.request_counts.completed - gone.request_counts.failed > 0


@pytest.fixture
def redis_url():
    url = f"redis://127.0.0.1:{free_port()}/0"
    try:
        r = LocalRedis.ensure(url)
    except RuntimeError as e:
        pytest.skip(str(e))
    yield url
    r.stop()


def test_a_sigkilled_gateway_process_loses_no_line_and_charges_none_twice(tmp_path, redis_url):
    n = 60
    config = write_config(tmp_path, {
        "batch": {"store_dir": str(tmp_path / "store"), "poll_period_s": 0.1, "lease_ttl_s": 2,
                  "lines_in_flight": 8},
        "gateway": {"store": {"url": redis_url}, "fair_sharing": {"store_url": redis_url},
                    "tenants": {"alpha": {"models": ["m1"], "daily_tokens": 10_000_000}}}})
    with server(fake_engine_argv("m1", ttft_ms=150, itl_ms=20)) as m1:
        argv = gateway_argv(f"m1={m1.url}", config=config)
        with server(argv) as a, server(argv) as b:
            c = sdk(a)
            f = c.files.create(file=("in.jsonl", b"".join(line(f"l{i}") for i in range(n))), purpose="batch")
            batch = c.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
            wait_for(lambda: c.batches.retrieve(batch.id).request_counts.completed >= 5, 30, "some lines done")
            os.kill(a.pid, signal.SIGKILL)  # its leased lines are lost with it until their leases expire
            t0 = time.monotonic()
            done = finished(sdk(b), batch.id, timeout_s=90)
            took = time.monotonic() - t0
        assert done.status == "completed" and done.request_counts.completed == n, done
    with server(argv) as again:  # a fresh process reads the same store
        out = rows(sdk(again), done.output_file_id)
    assert sorted(r["custom_id"] for r in out) == sorted(f"l{i}" for i in range(n))  # once each
    usage = asyncio.run(_usage(redis_url))
    batch_rows = [u for u in usage if u["tenant"] == "alpha" and u["model"] == "batch:m1"]
    assert sum(u["requests"] for u in batch_rows) == n  # a line cut off by the kill was never settled
    assert took < 60


async def _usage(url: str) -> list[dict]:
    store = RedisStore(url)
    try:
        return await store.usage()
    finally:
        await store.close()
