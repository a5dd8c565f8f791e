"""An engine replica's drain (cluster.engine.replica.wait_idle) against a scripted /metrics:
it waits for vLLM's gauges to read no request running or waiting, through failed reads."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from cluster.engine.replica import wait_idle
from cluster.process import free_port


def _gauges(running: int, waiting: int = 0) -> str:
    return (f'# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name="m"}} {running}\n'
            f'# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name="m"}} {waiting}\n')


@asynccontextmanager
async def _engine(script: list):
    """/metrics answers the next scripted item (the last one again and again): gauges
    (running, waiting), or an HTTP status."""
    reads = []

    async def metrics(request: web.Request) -> web.Response:
        item = script.pop(0) if len(script) > 1 else script[0]
        reads.append(item)
        if isinstance(item, int):
            return web.Response(status=item, text="busy")
        return web.Response(text=_gauges(*item))

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", reads
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("script, reads", [
    ([(0, 0)], 1),                          # idle at once
    ([(2, 1), (1, 0), (0, 0)], 3),          # its requests end
    ([500, (1, 0), (0, 0)], 3),             # a failed read is read again, not taken for idle
])
async def test_drain_waits_for_no_request_running_or_waiting(script, reads):
    async with _engine(list(script)) as (url, seen), aiohttp.ClientSession() as s:
        assert await wait_idle(s, url, 10, alive=lambda: True, period_s=0.01) is True
    assert len(seen) == reads


async def test_drain_gives_up_at_its_timeout_and_ends_when_the_engine_is_gone():
    async with _engine([(3, 0)]) as (url, _), aiohttp.ClientSession() as s:
        t0 = time.monotonic()
        assert await wait_idle(s, url, 0.2, alive=lambda: True, period_s=0.02) is False
        assert 0.2 <= time.monotonic() - t0 < 2
        assert await wait_idle(s, url, 10, alive=lambda: False) is True  # its process exited: nothing to wait for
