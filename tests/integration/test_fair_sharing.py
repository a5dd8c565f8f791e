"""Fair sharing on the real cluster (vLLM-CPU, the session's tiny-llama: max_num_seqs 16,
the default fair_sharing): a tenant flooding the model's engines past what they run is held
in the gateway's queue, a light tenant's request finds a slot (headroom) ahead of that
backlog instead of waiting for one of the flood's long streams to end, and the backlog of
clients that leave is dropped at once (and their engine work aborted)."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson

from cluster.bench.driver import SSEParser
from tests.conftest import metric, wait_for
from tests.integration.conftest import API_KEY, ENGINE_KWARGS, FLOOD_KEY, engine_urls

MODEL = "tiny-llama"


def body(max_tokens: int) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": max_tokens, "ignore_eos": True, "stream": True, "temperature": 0}


def engine_busy() -> float:
    return sum(metric(u, "vllm:num_requests_running") + metric(u, "vllm:num_requests_waiting")
               for u in engine_urls(MODEL))


async def test_a_light_tenant_overtakes_a_flooding_tenants_backlog(cluster):
    depth = lambda tenant: metric(cluster.metrics_url, "owc_fair_queue_depth", model=MODEL, tenant=tenant)  # noqa: E731
    # More long streams than the replicas run (max_num_seqs + dispatch margin each): some wait in the gateway.
    replicas = len(await asyncio.to_thread(engine_urls, MODEL))  # a Serve handle's sync call: off the loop
    slots = replicas * (ENGINE_KWARGS["max_num_seqs"] + cluster.cfg.gateway.fair_sharing.dispatch_margin)
    async with httpx.AsyncClient(base_url=cluster.url, timeout=120, limits=httpx.Limits(max_connections=None)) as c:
        started = 0

        async def flood_stream() -> None:
            nonlocal started
            async with c.stream("POST", "/v1/chat/completions", json=body(4000),
                                headers={"Authorization": f"Bearer {FLOOD_KEY}"}) as r:
                assert r.status_code == 200, await r.aread()
                started += 1
                parser, finish = SSEParser(), None  # not aiter_lines: it splits inside JSON at U+2028 and kin
                async for chunk in r.aiter_bytes():
                    for data in parser.feed(chunk):
                        assert not data.startswith('{"error"'), data  # an error event ends it as a failure
                        if data.startswith("{"):
                            finish = next((ch["finish_reason"] for ch in orjson.loads(data).get("choices", [])
                                           if ch.get("finish_reason")), finish)
                assert finish == "length", finish  # ended by its 4,000 tokens, nothing else

        # The light tenant is active (a request within gateway.fair_sharing.active_window_s), so the
        # flood may not take the model's last `headroom` slots once it holds its share.
        warm = await c.post("/v1/chat/completions", json={**body(4), "stream": False},
                            headers={"Authorization": f"Bearer {API_KEY}"})
        assert warm.status_code == 200, warm.text
        flood = [asyncio.create_task(flood_stream()) for _ in range(slots + 6)]
        try:
            await asyncio.to_thread(wait_for, lambda: depth("flood") >= 4, 60, "the flood's backlog in the gateway")
            backlog = depth("flood")
            t0 = time.monotonic()
            first_token_at, backlog_then = None, None
            async with c.stream("POST", "/v1/chat/completions", json=body(8),
                                headers={"Authorization": f"Bearer {API_KEY}"}) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if first_token_at is None and '"content"' in line:
                        first_token_at = time.monotonic() - t0
                        backlog_then = await asyncio.to_thread(depth, "flood")
            # The light request went ahead of the flood's queued requests: they are still waiting.
            assert first_token_at is not None and backlog_then >= 1, (first_token_at, backlog, backlog_then)
            assert first_token_at < 10, first_token_at
            # No flood stream failed meanwhile (one may have ended by finishing its 4,000 tokens, as
            # on a fast machine: the backlog assertion above is what shows the overtaking).
            failed = [repr(t.exception()) for t in flood if t.done() and not t.cancelled() and t.exception()]
            assert not failed, (f"{len(failed)} of {len(flood)} flood streams failed", failed[:3])
        finally:
            for t in flood:
                t.cancel()
            await asyncio.gather(*flood, return_exceptions=True)
    # Clients that left: out of the queue at once, their engine requests aborted.
    await asyncio.to_thread(wait_for, lambda: depth("flood") == 0, 5, "the flood's backlog dropped")
    await asyncio.to_thread(wait_for, lambda: engine_busy() == 0, 20, "the engines idle again")
    waits = metric(cluster.metrics_url, "owc_fair_queue_wait_seconds_count", model=MODEL, tenant="flood")
    assert waits >= started  # every flood request that got a slot was counted, queued or not
