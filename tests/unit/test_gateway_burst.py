"""Backpressure from the engine's real queue (issue: 1,000 concurrent streams on defaults got
936 false 429s, the queue being estimated as in-flight minus the engine's last running
count). One gateway process on default settings, the fake engine over real HTTP: 1,000
concurrent streams to an engine that runs them all complete with no 429; an engine whose
own queue is at the bound still gets 429 queue_full."""

from __future__ import annotations

import asyncio

import aiohttp
import yaml

from tests.conftest import fake_engine_argv, gateway_argv, metric, server, wait_for

BODY = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def _streams(url: str, n: int, max_tokens: int) -> dict[int, int]:
    """``n`` concurrent streams, each on its own connection; their statuses counted (-2: a 200
    stream that did not end with [DONE], -1: a connection error or timeout). aiohttp, not
    httpx: with httpx's client the thousand streams took 32.4 s here, with aiohttp's 5.4 s
    (the client shares the 2 cores with the gateway and the engine)."""
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(base_url=url, connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as c:
        async def one() -> None:
            try:
                async with c.post("/v1/chat/completions", json={**BODY, "max_tokens": max_tokens}) as r:
                    text = (await r.read()).decode()
                    code = r.status if r.status != 200 or text.rstrip().endswith("[DONE]") else -2
            except (aiohttp.ClientError, asyncio.TimeoutError):
                code = -1
            statuses[code] = statuses.get(code, 0) + 1

        await asyncio.gather(*(one() for _ in range(n)))
    return statuses


def test_a_thousand_concurrent_streams_complete_without_a_429():
    with server(fake_engine_argv("fake", ttft_ms=5, itl_ms=50, max_num_seqs=2048)) as engine, \
            server(gateway_argv(f"fake={engine.url}")) as gw:
        assert asyncio.run(_streams(gw.url, 1000, 20)) == {200: 1000}
        assert metric(gw.metrics_url, "owc_rejections_total", reason="queue_full") == 0


def test_an_engine_queue_at_its_bound_still_refuses(tmp_path):
    cfg = tmp_path / "owc.yaml"  # the default queue bound (64 per replica), the fair queue's wait shortened
    cfg.write_text(yaml.safe_dump({"models": {"fake": {"source": "external"}},
                                   "gateway": {"access_log": {"enabled": False}, "fair_sharing": {"max_wait_s": 1}}}))
    with server(fake_engine_argv("fake", ttft_ms=5, itl_ms=100, max_num_seqs=4)) as engine, \
            server(gateway_argv(f"fake={engine.url}", config=str(cfg))) as gw:
        async def scenario() -> dict[int, int]:
            # 100 long streams at once: the engine runs 4 and queues the rest in its own queue.
            flood = asyncio.create_task(_streams(gw.url, 100, 40))
            await asyncio.to_thread(wait_for, lambda: metric(engine.url, "vllm:num_requests_waiting") >= 64, 20,
                                    "the engine's queue at the bound")
            await asyncio.sleep(0.5)  # the gateway's next scrape sees it
            late = await _streams(gw.url, 5, 1)
            flood.cancel()  # its clients leave: no need to wait for 100 streams at 4 at a time
            await asyncio.gather(flood, return_exceptions=True)
            return late

        late = asyncio.run(scenario())
        assert late == {429: 5}, late
        assert metric(gw.metrics_url, "owc_rejections_total", reason="queue_full") == 5
