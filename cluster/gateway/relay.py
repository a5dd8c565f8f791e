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
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from cluster.gateway.errors import OpenAIError, from_upstream, sse_error_event
from cluster.gateway.upstream import ConnectFailed, Response, Upstream, UpstreamError
from cluster.routing.endpoints import Endpoint
from cluster.routing.picker import LeastInFlightPicker, ReplicaView

CLIENT_CLOSED = 499
Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]


@dataclass
class Outcome:
    """What happened to one request, for metrics and logs."""

    status: int = 0
    endpoint: Endpoint | None = None


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
    def __init__(self, *, connect_timeout_s: float, request_timeout_s: float, picker: LeastInFlightPicker | None = None):
        self._upstream = Upstream(connect_timeout_s=connect_timeout_s)
        self._request_timeout_s = request_timeout_s
        self._picker = picker or LeastInFlightPicker()
        self._addresses: dict[str, tuple[str, int]] = {}
        self.in_flight: dict[str, int] = defaultdict(int)

    async def close(self) -> None:
        self._upstream.close()

    def _address(self, url: str) -> tuple[str, int]:
        addr = self._addresses.get(url)
        if addr is None:
            parts = urlsplit(url)
            addr = self._addresses[url] = (parts.hostname or "127.0.0.1", parts.port or 80)
        return addr

    async def _open(
        self, endpoints: list[Endpoint], path: str, body: bytes, headers: dict[str, str], outcome: Outcome
    ) -> Response:
        """POST to a replica; a replica refusing the connection is skipped (nothing was sent)."""
        tried: set[str] = set()
        while True:
            views = [ReplicaView(endpoint=e, in_flight=self.in_flight[e.replica_id]) for e in endpoints]
            ep = self._picker.pick(views, exclude=frozenset(tried))
            if ep is None:
                raise OpenAIError(
                    503, "no engine replica of this model is reachable; retry shortly",
                    code="no_healthy_replica", headers={"Retry-After": "1"},
                )
            tried.add(ep.replica_id)
            host, port = self._address(ep.url)
            try:
                resp = await self._upstream.post(host, port, path, body, headers)
            except ConnectFailed:
                continue
            except UpstreamError as e:
                raise OpenAIError(502, f"engine connection failed: {e}", code="engine_unreachable") from None
            outcome.endpoint = ep
            return resp

    async def forward(
        self,
        receive: Receive,
        send: Send,
        *,
        endpoints: list[Endpoint],
        path: str,
        body: bytes,
        stream: bool,
        request_id: str,
        outcome: Outcome,
    ) -> None:
        """Relay one request; raises OpenAIError before any response byte is sent."""
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        deadline = _Deadline(self._request_timeout_s)
        # Once the body is consumed, receive() only returns on disconnect. Before the engine
        # answers (a non-streamed response comes all at the end), a disconnect cancels the
        # call; after, it closes the engine connection. Either way vLLM aborts the request.
        gone = asyncio.ensure_future(_wait_disconnect(receive))
        opening = deadline.opening = asyncio.ensure_future(self._open(endpoints, path, body, headers, outcome))
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
            resp = deadline.resp = opening.result()
            await self._relay(resp, send, stream=stream, request_id=request_id, outcome=outcome, gone=gone, deadline=deadline)
        finally:
            deadline.cancel()
            gone.cancel()

    async def _relay(
        self, resp: Response, send: Send, *, stream: bool, request_id: str, outcome: Outcome,
        gone: asyncio.Future, deadline: _Deadline,
    ) -> None:
        rid = outcome.endpoint.replica_id if outcome.endpoint else ""
        self.in_flight[rid] += 1
        gone.add_done_callback(lambda t: None if t.cancelled() else resp.close())
        completed = False
        try:
            if resp.status >= 400:
                data = await resp.read()
                completed = True
                raise from_upstream(resp.status, data)
            out_headers = [(b"x-request-id", request_id.encode())]
            if stream:
                completed = await self._relay_stream(resp, send, out_headers, outcome, gone, deadline)
            else:
                data = await resp.read()
                completed = True
                ctype = resp.headers.get("content-type", "application/json").encode()
                outcome.status = resp.status
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": [(b"content-type", ctype), (b"content-length", str(len(data)).encode()), *out_headers]})
                await send({"type": "http.response.body", "body": data, "more_body": False})
        except UpstreamError as e:
            if gone.done():
                outcome.status = CLIENT_CLOSED
                return
            if deadline.expired:
                raise OpenAIError(504, "engine did not finish in time", code="engine_timeout") from None
            raise OpenAIError(502, f"engine connection broke: {e}", code="engine_connection_lost") from None
        finally:
            # A finished response hands its connection back to the pool (keep-alive); an
            # unfinished one drops it, so that the engine aborts the request.
            if completed and not gone.done():
                resp.release()
            else:
                resp.close()
            self.in_flight[rid] -= 1

    async def _relay_stream(
        self, resp: Response, send: Send, out_headers: list, outcome: Outcome, gone: asyncio.Future, deadline: _Deadline
    ) -> bool:
        """Relay the SSE stream; True when the engine finished it."""
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"), *out_headers,
        ]})
        outcome.status = 200
        try:
            async for chunk in resp.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as e:
            if gone.done():  # we closed it because the client went away
                outcome.status = CLIENT_CLOSED
                return False
            # Headers are gone already: end the stream with an SSE error event, not a hang.
            if deadline.expired:
                outcome.status, err = 504, OpenAIError(504, "engine did not finish in time", code="engine_timeout")
            else:
                outcome.status, err = 502, OpenAIError(502, f"engine stream broke: {e}", code="engine_stream_broken")
            await send({"type": "http.response.body", "body": sse_error_event(err), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return False
        if gone.done():
            outcome.status = CLIENT_CLOSED
            return False
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
