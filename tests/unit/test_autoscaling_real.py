"""The real-run report (loadtests/autoscaling_real.py): how a run's samples and decisions become
its SLO, replica-hours, scale events, peak and start-ups; the dilated profile; and the docs
block rendered from the committed result."""

import contextlib
import json

import pytest

from cluster.capacity.simulator import EngineProfile
from loadtests import autoscaling_real, readme_figures


def test_summarise_table():
    reqs = [{"t": 0.0, "lag_s": 0.0, "ok": True, "ttft_s": 0.2},
            {"t": 1.0, "lag_s": 0.1, "ok": True, "ttft_s": 1.5},  # late: a miss
            {"t": 2.0, "lag_s": 0.0, "ok": False, "ttft_s": None, "error": "HTTP 503"},  # failed: a miss
            {"t": 3.0, "lag_s": 0.0, "ok": True, "ttft_s": 1.0}]  # at the SLO: within
    samples = [{"t": 0.0, "replicas": 1, "running": 1}, {"t": 1800.0, "replicas": 3, "running": 1},
               {"t": 1810.0, "replicas": 3, "running": 3}, {"t": 3600.0, "replicas": 2, "running": 2},
               {"t": 7200.0, "replicas": 9, "running": 9}]  # after the end: not counted
    decisions = [{"t": 0.0, "from": 1, "to": 1, "reason": "hold:no_data"},
                 {"t": 1800.0, "from": 1, "to": 3, "reason": "up:burst"},
                 {"t": 3600.0, "from": 3, "to": 2, "reason": "down:low_load"}]
    r = autoscaling_real.summarise(reqs, samples, decisions, slo_s=1.0, end=3600.0)
    assert r["attainment"] == 0.5 and r["failed"] == 1 and r["errors"] == ["HTTP 503"]
    # 1 replica for half an hour, 3 for 10 s, 3 for 1790 s
    assert r["replica_hours"] == pytest.approx((1 * 1800 + 3 * 10 + 3 * 1790) / 3600)
    assert r["scale_events"] == 2 and r["peak_replicas"] == 3
    assert r["startups_s"] == [10.0] and r["startup_median_s"] == 10.0
    assert r["holds_no_data"] == 1 and r["decisions_held"] == 1


def test_dilated_profile_serves_that_many_times_fewer_requests():
    p = EngineProfile(max_num_seqs=32, prefill_tokens_per_s=400_000, decode_step_base_s=0.002,
                      decode_step_per_seq_s=0.0001, startup_s=12.0, kv_capacity_tokens=32768)
    d = autoscaling_real.dilated(p, 20)
    assert d.capacity_rps(512, 128) == pytest.approx(p.capacity_rps(512, 128) / 20)
    assert d.startup_s == p.startup_s and d.max_num_seqs == p.max_num_seqs


def test_real_block_reflects_the_committed_result():
    doc = json.loads((readme_figures.RESULTS / readme_figures.AUTOSCALING_REAL).read_text())
    block = readme_figures.autoscaling_real_block(doc)
    real, sim = doc["real"], doc["simulated"]["owc"]
    assert f"| **owc, real** (Ray Serve, gateway, controller, Prometheus) | {real['attainment'] * 100:.2f}% |" in block
    assert f"| {sim['replica_hours']:.3f} | {sim['scale_events']} | {sim['peak_replicas']} |" in block
    assert doc["trace"]["sha256_16"] in block and "not vLLM" in block


@contextlib.asynccontextmanager
async def _profiled_engine():
    """A profiled engine (2 slots, 100 prompt tokens in 10 ms, 10-ms decode steps) served on a
    free port: (the engine, its URL)."""
    from aiohttp import web

    from cluster.process import free_port
    from loadtests.profiled_engine import ProfiledEngine

    profile = {"max_num_seqs": 2, "prefill_tokens_per_s": 10_000, "decode_step_base_s": 0.01,
               "decode_step_per_seq_s": 0.0, "startup_s": 0.0, "kv_capacity_tokens": 1000}
    engine = ProfiledEngine(model="m", profile=profile)
    runner = web.AppRunner(engine.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield engine, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def test_profiled_engine_serves_the_simulators_replica_model(monkeypatch):
    """Batch slots (the third request waits for one: vllm:num_requests_waiting), a prefill before
    the first token, one token per decode step, the usage at the end."""
    import asyncio
    import time

    import aiohttp

    from cluster.bench.driver import one_request
    from cluster.engine.guard import ENGINE_KEY_ENV

    monkeypatch.delenv(ENGINE_KEY_ENV, raising=False)

    async def scenario():
        waiting = []
        async with _profiled_engine() as (engine, url), aiohttp.ClientSession() as s:
            async def watch():
                while True:
                    waiting.append(engine.waiting.labels("m", "0")._value.get())
                    await asyncio.sleep(0.005)

            w = asyncio.create_task(watch())
            t0 = time.perf_counter()
            rs = await asyncio.gather(*(one_request(s, url, "m", f"r{i} " + "x " * 99, 5, chat=False)
                                        for i in range(3)))
            took = time.perf_counter() - t0
            w.cancel()
        return rs, took, waiting, engine

    rs, took, waiting, engine = asyncio.run(scenario())
    assert all(r.ok and r.output_tokens == 5 for r in rs), rs
    assert max(waiting) == 1  # two slots, three requests
    # a prefill of 100 tokens (10 ms) before the first token; 4 decode steps of 10 ms after it
    assert all(r.ttft_s >= 0.01 for r in rs) and all(r.e2e_s - r.ttft_s >= 0.035 for r in rs)
    first_done = sorted(r.e2e_s for r in rs)[0]
    assert max(r.ttft_s for r in rs) >= first_done - 0.005  # the third began only once a slot was free
    assert engine.kv.labels("m", "0")._value.get() == 0


def test_profiled_engine_answers_a_whole_completion_through_its_scheduler(monkeypatch):
    """A non-streamed completion (a batch line, loadtests/batch_capacity.py) goes through the same
    slots and decode steps and answers once, with the text and usage; its slot is freed after."""
    import asyncio
    import time

    import aiohttp

    from cluster.engine.guard import ENGINE_KEY_ENV

    monkeypatch.delenv(ENGINE_KEY_ENV, raising=False)

    async def scenario():
        async with _profiled_engine() as (engine, url), aiohttp.ClientSession() as s:
            t0 = time.perf_counter()
            async with s.post(f"{url}/v1/completions", json={"model": "m", "prompt": "a b c", "max_tokens": 5}) as r:
                body = await r.json()
            return r.status, body, time.perf_counter() - t0, engine

    status, body, took, engine = asyncio.run(scenario())
    assert status == 200 and body["object"] == "text_completion"
    assert body["choices"][0]["text"] == " tok0 tok1 tok2 tok3 tok4" and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert took >= 0.04  # 4 decode steps of 10 ms after the first token
    assert engine.running.labels("m", "0")._value.get() == 0 and engine.kv.labels("m", "0")._value.get() == 0
