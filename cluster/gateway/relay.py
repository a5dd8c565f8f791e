"""The token path: forward a validated request to one engine replica's own OpenAI HTTP
server and pass its bytes back unparsed, straight onto the ASGI connection.

Chosen by measurement (README, `make bench`): Ray owns placement, lifecycle, health and
replica counts, but tokens never cross a Ray actor hop. Streamed bytes are forwarded as
read, so when several SSE events are ready they travel as one chunk. No framework layer
sits between the upstream read and the client write. Closing the engine connection is how
an engine request is aborted: vLLM aborts a request whose client went away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

from cluster.gateway.errors import OpenAIError, from_upstream, sse_error_event
from cluster.gateway.upstream import ConnectFailed, Response, Upstream, UpstreamError
from cluster.routing.endpoints import Endpoint
from cluster.routing.filters import QueueFull
from cluster.routing.router import NoReplica, Routing
from cluster.routing.types import RequestInfo

CLIENT_CLOSED = 499
Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]


@dataclass
class Outcome:
    """What happened to one request, for metrics, logs and traces."""

    status: int = 0
    endpoint: Endpoint | None = None
    started: float = field(default_factory=time.perf_counter)
    retry_reasons: list[str] = field(default_factory=list)  # one per re-send to another replica
    decisions: list[float] = field(default_factory=list)  # seconds per routing decision
    plugin_timings: list[tuple[str, float]] = field(default_factory=list)  # (plugin, seconds), every decision
    ttft_s: float | None = None
    itl: list[float] = field(default_factory=list)  # seconds between token events
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # The gateway asked the engine for a usage event the client did not ask for: drop it.
    strip_usage: bool = False
    on_answer: Callable[[], None] | None = None  # the engine answered (response headers)

    @property
    def retries(self) -> int:
        return len(self.retry_reasons)

    def usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens = usage.get("prompt_tokens")
            self.completion_tokens = usage.get("completion_tokens")


class _Deadline:
    """Ends a request that outlives ``request_timeout_s``: closes its engine connection."""

    def __init__(self, timeout_s: float):
        self.expired = False
        self.resp: Response | None = None
        self.opening: asyncio.Future | None = None
        self._handle = asyncio.get_running_loop().call_later(timeout_s, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self.resp is not None:
            self.resp.close()
        elif self.opening is not None:
            self.opening.cancel()

    def cancel(self) -> None:
        self._handle.cancel()


class Relay:
    def __init__(self, *, connect_timeout_s: float, request_timeout_s: float, routing: Routing):
        self._upstream = Upstream(connect_timeout_s=connect_timeout_s)
        self._request_timeout_s = request_timeout_s
        self.routing = routing
        self._addresses: dict[str, tuple[str, int]] = {}

    async def close(self) -> None:
        self._upstream.close()

    def _address(self, url: str) -> tuple[str, int]:
        addr = self._addresses.get(url)
        if addr is None:
            parts = urlsplit(url)
            addr = self._addresses[url] = (parts.hostname or "127.0.0.1", parts.port or 80)
        return addr

    async def _open(
        self, endpoints: list[Endpoint], route: RequestInfo, path: str, body: bytes, headers: dict[str, str],
        outcome: Outcome, stream: bool,
    ) -> tuple[Response, bytes]:
        """Send the request to the replica routing picks and wait for its first body bytes
        (a non-streamed response: all of it). Until then the client has received nothing,
        so a replica that refuses the connection or dies is retried on another one."""
        routing = self.routing
        tried: set[str] = set()
        lost: str | None = None
        while True:
            t0 = time.perf_counter()
            try:
                ep = routing.choose(endpoints, route, frozenset(tried), outcome.plugin_timings)
            except QueueFull as e:
                raise OpenAIError(429, f"{e}; retry shortly", code="queue_full", headers={"Retry-After": "1"}) from None
            except NoReplica:
                if lost is not None:
                    raise OpenAIError(502, f"engine connection broke: {lost}", code="engine_connection_lost") from None
                raise OpenAIError(
                    503, "no engine replica of this model is reachable; retry shortly",
                    code="no_healthy_replica", headers={"Retry-After": "1"},
                ) from None
            finally:
                outcome.decisions.append(time.perf_counter() - t0)
            rid = ep.replica_id
            tried.add(rid)
            outcome.endpoint = ep
            routing.in_flight[rid] += 1
            host, port = self._address(ep.url)
            resp: Response | None = None
            try:
                resp = await self._upstream.post(host, port, path, body, headers)
                if stream and resp.status < 400:
                    first = await anext(aiter(resp.chunks()), b"")
                else:
                    first = await resp.read()
                return resp, first
            except BaseException as e:
                # Not this replica after all: its connection goes, its in-flight count too.
                if resp is not None:
                    resp.close()
                routing.in_flight[rid] -= 1
                outcome.endpoint = None
                if not isinstance(e, UpstreamError):
                    raise
                routing.failed(rid)
                reason = "connect_refused" if isinstance(e, ConnectFailed) else "engine_lost"
                if reason == "engine_lost":
                    lost = str(e)
                if outcome.retries >= routing.max_retries(route.model):
                    if reason == "engine_lost":
                        raise OpenAIError(502, f"engine connection broke: {e}", code="engine_connection_lost") from None
                    raise OpenAIError(503, f"no engine replica reachable: {e}", code="no_healthy_replica",
                                      headers={"Retry-After": "1"}) from None
                outcome.retry_reasons.append(reason)

    async def forward(
        self,
        receive: Receive,
        send: Send,
        *,
        endpoints: list[Endpoint],
        route: RequestInfo,
        path: str,
        body: bytes,
        stream: bool,
        request_id: str,
        outcome: Outcome,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        """Relay one request; raises OpenAIError before any response byte is sent."""
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        if extra_headers:
            headers.update(extra_headers)
        deadline = _Deadline(self._request_timeout_s)
        # Once the body is consumed, receive() only returns on disconnect. Before the engine
        # answers (a non-streamed response comes all at the end), a disconnect cancels the
        # call; after, it closes the engine connection. Either way vLLM aborts the request.
        gone = asyncio.ensure_future(wait_disconnect(receive))
        opening = deadline.opening = asyncio.ensure_future(
            self._open(endpoints, route, path, body, headers, outcome, stream)
        )
        try:
            try:
                await asyncio.wait({gone, opening}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                opening.cancel()
                raise
            if not opening.done():
                opening.cancel()
                outcome.status = CLIENT_CLOSED
                return
            if opening.cancelled():
                raise OpenAIError(504, "engine did not answer in time", code="engine_timeout")
            resp, first = opening.result()
            deadline.resp = resp
            rid = outcome.endpoint.replica_id if outcome.endpoint else ""
            try:
                if outcome.on_answer is not None:
                    outcome.on_answer()
                await self._relay(resp, first, send, stream=stream, request_id=request_id, outcome=outcome,
                                  gone=gone, deadline=deadline)
            finally:
                self.routing.in_flight[rid] -= 1
        finally:
            deadline.cancel()
            gone.cancel()

    async def _relay(
        self, resp: Response, first: bytes, send: Send, *, stream: bool, request_id: str, outcome: Outcome,
        gone: asyncio.Future, deadline: _Deadline,
    ) -> None:
        gone.add_done_callback(lambda t: None if t.cancelled() else resp.close())
        completed = False
        try:
            if resp.status >= 400:
                completed = True
                raise from_upstream(resp.status, first)
            out_headers = [(b"x-request-id", request_id.encode())]
            if stream:
                completed = await self._relay_stream(resp, first, send, out_headers, outcome, gone, deadline)
            else:
                data = first
                completed = True
                try:
                    outcome.usage(orjson.loads(data).get("usage"))
                except (orjson.JSONDecodeError, AttributeError):
                    pass
                ctype = resp.headers.get("content-type", "application/json").encode()
                outcome.status = resp.status
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": [(b"content-type", ctype), (b"content-length", str(len(data)).encode()), *out_headers]})
                await send({"type": "http.response.body", "body": data, "more_body": False})
        finally:
            # A finished response hands its connection back to the pool (keep-alive); an
            # unfinished one drops it, so that the engine aborts the request.
            if completed and not gone.done():
                resp.release()
            else:
                resp.close()

    async def _relay_stream(
        self, resp: Response, first: bytes, send: Send, out_headers: list, outcome: Outcome, gone: asyncio.Future,
        deadline: _Deadline,
    ) -> bool:
        """Relay the SSE stream; True when the engine finished it."""
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"), *out_headers,
        ]})
        outcome.status = 200
        tail = b""
        last = 0.0
        try:
            async for chunk in _then(first, resp.chunks()):
                # Whole SSE events only: a partial event waits for the rest (clients cannot
                # use half an event anyway), so that usage events can be read and stripped.
                if tail:
                    chunk, tail = tail + chunk, b""
                if not chunk.endswith(b"\n\n"):
                    cut = chunk.rfind(b"\n\n") + 2
                    if cut == 1:
                        tail = chunk
                        continue
                    chunk, tail = chunk[:cut], chunk[cut:]
                now = time.perf_counter()
                if b'"choices":[]' in chunk:
                    # A fast engine's whole answer may arrive in one read with its usage.
                    chunk, tokens = _take_usage(chunk, outcome)
                else:
                    tokens = not chunk.startswith(b"data: [DONE]")
                if tokens:
                    if outcome.ttft_s is None:
                        outcome.ttft_s = now - outcome.started
                    else:
                        outcome.itl.append(now - last)
                    last = now
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if tail:
                await send({"type": "http.response.body", "body": tail, "more_body": True})
        except UpstreamError as e:
            if gone.done():  # we closed it because the client went away
                outcome.status = CLIENT_CLOSED
                return False
            # Headers are gone already: end the stream with an SSE error event, not a hang.
            if deadline.expired:
                outcome.status, err = 504, OpenAIError(504, "engine did not finish in time", code="engine_timeout")
            else:
                outcome.status, err = 502, OpenAIError(502, f"engine stream broke: {e}", code="engine_stream_broken")
                if outcome.endpoint is not None:
                    self.routing.failed(outcome.endpoint.replica_id)
            await send({"type": "http.response.body", "body": sse_error_event(err), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return False
        if gone.done():
            outcome.status = CLIENT_CLOSED
            return False
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True


async def _then(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk


def _take_usage(chunk: bytes, outcome: Outcome) -> tuple[bytes, bool]:
    """Read the usage of the final `"choices":[]` event; drop that event when the gateway,
    not the client, asked for it. Also says whether token events precede it in the chunk."""
    at = chunk.find(b'"choices":[]')
    start = chunk.rfind(b"data:", 0, at)
    end = chunk.find(b"\n\n", at)
    if start < 0 or end < 0:
        return chunk, True
    end += 2
    try:
        outcome.usage(orjson.loads(chunk[start + 5:end]).get("usage"))
    except (orjson.JSONDecodeError, AttributeError):
        return chunk, True
    return (chunk[:start] + chunk[end:] if outcome.strip_usage else chunk), start > 0


async def wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
