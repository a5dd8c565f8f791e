"""A gateway process that leaves drains (cluster.gateway.edge.server.DrainingServer): two gateway
processes share one port (SO_REUSEPORT, as `owc serve` runs them); one gets SIGTERM while
streams run through both and a client keeps opening new connections and reusing keep-alive
ones. Every stream completes, no request of either client fails, the leaving process exits
once its streams are done, and requests go on through the other process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import httpx
import yaml

from cluster.process import free_port
from tests.conftest import fake_engine_argv, gateway_argv, server, wait_for

BODY = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


def test_sigterm_drains_streams_and_drops_no_connection(tmp_path):
    port = free_port()
    cfg = tmp_path / "owc.yaml"
    cfg.write_text(yaml.safe_dump({"models": {"fake": {"source": "external"}},
                                   "gateway": {"access_log": {"enabled": False}, "port": port}}))
    with server(fake_engine_argv("fake", ttft_ms=5, itl_ms=100), log=tmp_path / "engine.log") as engine, \
            server(gateway_argv(f"fake={engine.url}", config=str(cfg)), port=port, log=tmp_path / "gw0.log") as gw0, \
            server(gateway_argv(f"fake={engine.url}", config=str(cfg)), port=port, log=tmp_path / "gw1.log") as gw1:
        # Both ready: the shared port answers for either, so each one's own metrics port is asked.
        for g in (gw0, gw1):
            wait_for(lambda g=g: _answers(g.metrics_url + "/metrics"), 30, "both gateway processes up")
        url = f"http://127.0.0.1:{port}"
        result = asyncio.run(_drive(url, gw0))
        result["other_alive"] = gw1.alive()
    assert result["streams_ok"] == result["streams"] and result["streams"] >= 8, result
    assert result["errors"] == [], result
    assert result["after"] > 20, result  # requests went on through the other process
    # The leaving process exited once its streams ended (each ~8 s: longer than uvicorn's default 5 s graceful shutdown), not at once and not at the drain timeout.
    assert 5 < result["exited_after_s"] < 20, result
    assert result["other_alive"]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def _drive(url: str, leaving) -> dict:
    errors: list[str] = []
    stop = asyncio.Event()
    counts = {"after": 0}
    sigterm_at: list[float] = []

    async def stream(c: httpx.AsyncClient) -> bool:
        async with c.stream("POST", url + "/v1/chat/completions", json={**BODY, "max_tokens": 80, "stream": True}) as r:
            text = (await r.aread()).decode()
        return r.status_code == 200 and text.rstrip().endswith("data: [DONE]")

    async def short_requests(c: httpx.AsyncClient, *, new_connections: bool) -> None:
        while not stop.is_set():
            try:
                r = await c.post(url + "/v1/chat/completions", json={**BODY, "max_tokens": 1},
                                 headers={"Connection": "close"} if new_connections else None)
                if r.status_code != 200:
                    errors.append(f"status {r.status_code}")
                elif sigterm_at:
                    counts["after"] += 1
            except httpx.HTTPError as e:
                errors.append(f"{repr(e)} at {time.monotonic() - sigterm_at[0] if sigterm_at else -1:.2f}s")
            await asyncio.sleep(0.01)

    async with httpx.AsyncClient(timeout=60) as keepalive, httpx.AsyncClient(timeout=60) as fresh:
        streams = [asyncio.create_task(stream(keepalive)) for _ in range(10)]
        load = [asyncio.create_task(short_requests(fresh, new_connections=True)),
                asyncio.create_task(short_requests(keepalive, new_connections=False))]
        await asyncio.sleep(1.0)
        os.kill(leaving.pid, signal.SIGTERM)
        sigterm_at.append(time.monotonic())
        while leaving.alive() and time.monotonic() - sigterm_at[0] < 30:
            await asyncio.sleep(0.05)
        exited_after = time.monotonic() - sigterm_at[0]
        ok = await asyncio.gather(*streams)
        await asyncio.sleep(0.5)
        stop.set()
        for t in load:
            with contextlib.suppress(asyncio.CancelledError):
                await t
    return {"streams": len(ok), "streams_ok": sum(ok), "errors": errors, "after": counts["after"],
            "exited_after_s": exited_after}
