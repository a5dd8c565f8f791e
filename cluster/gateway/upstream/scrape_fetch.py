"""How the stats poller (cluster.gateway.upstream.stats_poller) reads an engine's /metrics and
/v1/models: ``get(base_url, path) -> (status, body)``, raising ``Unreachable`` when no answer
can be had from the engine (refused, reset) and ``TimeoutError`` when it is slow.

A scrape reads vLLM's metrics 4 times a second per engine (the routing families only, ~0.5 kB,
where the engine filters: stats_poller.FILTERED_METRICS; else ~50 kB). Through httpx a whole
read cost a gateway process ~1.7 ms of CPU (issue 34: ~0.011 of a core with one idle engine,
most of an idle gateway's CPU); the generation hop's keep-alive client (cluster.gateway.upstream.
engine_client, on httptools' C parser) reads the same answer for ~0.2 ms. The poller takes any
``Fetch`` (tests fake the engines in-process through httpx)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from cluster.gateway.upstream.engine_client import EngineClient, EngineError, Response


class Unreachable(Exception):
    """The engine could not be reached or broke the connection."""


class Fetch(Protocol):
    async def get(self, base_url: str, path: str) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


class EngineFetch:
    def __init__(self, *, timeout_s: float, engine_key: str | None = None):
        self._client = EngineClient(connect_timeout_s=timeout_s, key=engine_key)
        self._timeout_s = timeout_s

    async def get(self, base_url: str, path: str) -> tuple[int, bytes]:
        host, port = self._client.address(base_url)
        resp: Response | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                resp = await self._client.post(host, port, path, b"", {}, method="GET")
                body = await resp.read()
        except EngineError as e:
            raise Unreachable(str(e)) from None
        finally:
            if resp is not None:
                resp.release()  # kept alive when read to its end, else closed
        return resp.status, body

    async def aclose(self) -> None:
        self._client.close()
