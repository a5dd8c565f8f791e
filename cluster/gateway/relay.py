"""The token path: forward a validated request to one engine replica's own OpenAI HTTP
server and pass its bytes back unparsed.

Chosen by measurement (README, `make bench`): Ray owns placement, lifecycle, health and
replica counts, but tokens never cross a Ray actor hop. Streamed bytes are forwarded as
read, so when several SSE events are ready they travel as one chunk (fewer writes per
token under load). Closing the upstream connection is how an engine request is aborted:
vLLM aborts a request whose client went away.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from cluster.gateway.errors import OpenAIError, from_upstream, sse_error_event
from cluster.routing.endpoints import Endpoint
from cluster.routing.picker import LeastInFlightPicker, ReplicaView

CLIENT_CLOSED = 499


@dataclass
class Outcome:
    """What happened to one request, for metrics and logs."""

    status: int = 0
    endpoint: Endpoint | None = None


class _UpstreamStream(StreamingResponse):
    """A streaming response that always releases its upstream, even if never iterated."""

    def __init__(
        self,
        upstream: aiohttp.ClientResponse,
        body: AsyncIterator[bytes],
        headers: dict[str, str],
        cleanup: Callable[[], None],
    ):
        super().__init__(body, status_code=200, media_type="text/event-stream", headers=headers)
        self._upstream = upstream
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Not release(): an unfinished stream must drop the connection so the engine aborts.
            self._upstream.close()
            self._cleanup()


class Relay:
    def __init__(
        self,
        *,
        session_factory: Callable[[], aiohttp.ClientSession],
        connect_timeout_s: float,
        request_timeout_s: float,
        picker: LeastInFlightPicker | None = None,
    ):
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=connect_timeout_s)
        self._picker = picker or LeastInFlightPicker()
        self.in_flight: dict[str, int] = defaultdict(int)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = self._session_factory()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _views(self, endpoints: list[Endpoint]) -> list[ReplicaView]:
        return [ReplicaView(endpoint=e, in_flight=self.in_flight[e.replica_id]) for e in endpoints]

    async def _open(
        self, endpoints: list[Endpoint], path: str, body: bytes, headers: dict[str, str], outcome: Outcome
    ) -> aiohttp.ClientResponse:
        """POST to a replica; a replica refusing the connection is skipped (nothing was sent)."""
        tried: set[str] = set()
        while True:
            ep = self._picker.pick(self._views(endpoints), exclude=frozenset(tried))
            if ep is None:
                raise OpenAIError(
                    503, "no engine replica of this model is reachable; retry shortly",
                    code="no_healthy_replica", headers={"Retry-After": "1"},
                )
            tried.add(ep.replica_id)
            try:
                resp = await self.session.post(ep.url + path, data=body, headers=headers, timeout=self._timeout)
            except aiohttp.ClientConnectorError:
                continue
            except asyncio.TimeoutError:
                raise OpenAIError(504, "engine did not answer in time", code="engine_timeout") from None
            except aiohttp.ClientError as e:
                raise OpenAIError(502, f"engine connection failed: {e}", code="engine_unreachable") from None
            outcome.endpoint = ep
            return resp

    async def forward(
        self,
        request: Request,
        *,
        endpoints: list[Endpoint],
        path: str,
        body: bytes,
        stream: bool,
        request_id: str,
        outcome: Outcome,
        on_done: Callable[[], None],
    ) -> Response:
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        out_headers = {"x-request-id": request_id}
        if stream:
            return await self._stream(request, endpoints, path, body, headers, out_headers, outcome, on_done)
        try:
            return await self._unary(request, endpoints, path, body, headers, out_headers, outcome)
        except OpenAIError as e:
            outcome.status = e.status
            raise
        finally:
            on_done()

    async def _unary(self, request, endpoints, path, body, headers, out_headers, outcome) -> Response:
        async def call() -> tuple[int, bytes, str]:
            resp = await self._open(endpoints, path, body, headers, outcome)
            rid = outcome.endpoint.replica_id if outcome.endpoint else ""
            self.in_flight[rid] += 1
            try:
                data = await resp.read()
                return resp.status, data, resp.headers.get("Content-Type", "application/json")
            finally:
                self.in_flight[rid] -= 1
                resp.close()

        upstream = asyncio.ensure_future(call())
        gone = asyncio.ensure_future(_wait_disconnect(request.receive))
        try:
            done, _ = await asyncio.wait({upstream, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if upstream not in done:
            # Client went away: cancelling closes the engine connection, and vLLM aborts.
            upstream.cancel()
            outcome.status = CLIENT_CLOSED
            return Response(status_code=CLIENT_CLOSED)
        try:
            status, data, ctype = upstream.result()
        except asyncio.TimeoutError:
            raise OpenAIError(504, "engine did not answer in time", code="engine_timeout") from None
        except aiohttp.ClientError as e:
            raise OpenAIError(502, f"engine connection broke: {e}", code="engine_connection_lost") from None
        if status >= 400:
            raise from_upstream(status, data)
        outcome.status = status
        return Response(data, status_code=status, media_type=ctype, headers=out_headers)

    async def _stream(self, request, endpoints, path, body, headers, out_headers, outcome, on_done) -> Response:
        try:
            resp = await self._open(endpoints, path, body, headers, outcome)
        except OpenAIError as e:
            outcome.status = e.status
            on_done()
            raise
        if resp.status >= 400:
            try:
                err = from_upstream(resp.status, await resp.read())
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                err = OpenAIError(502, f"engine connection broke: {e}", code="engine_connection_lost")
            finally:
                resp.close()
            outcome.status = err.status
            on_done()
            raise err
        rid = outcome.endpoint.replica_id if outcome.endpoint else ""
        self.in_flight[rid] += 1
        outcome.status = 200

        async def body_iter() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.content.iter_any():
                    yield chunk
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                # Headers are gone already: end the stream with an SSE error event, not a hang.
                outcome.status = 502
                yield sse_error_event(OpenAIError(502, f"engine stream broke: {e}", code="engine_stream_broken"))

        def cleanup() -> None:
            self.in_flight[rid] -= 1
            on_done()

        return _UpstreamStream(
            resp,
            body_iter(),
            headers={**out_headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            cleanup=cleanup,
        )


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
