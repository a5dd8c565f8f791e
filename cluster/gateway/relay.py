"""The token path: forward a validated request to one engine replica's own OpenAI HTTP
server and pass its bytes back unparsed, straight onto the ASGI connection.

Chosen by measurement (README, `make bench`): Ray owns placement, lifecycle, health and
replica counts, but tokens never cross a Ray actor hop. Streamed bytes are forwarded as
read, so when several SSE events are ready they travel as one chunk. No framework layer
sits between the upstream read and the client write (the per-token cost is one read and
one write). Closing the upstream connection is how an engine request is aborted: vLLM
aborts a request whose client went away.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from cluster.gateway.errors import OpenAIError, from_upstream, sse_error_event
from cluster.routing.endpoints import Endpoint
from cluster.routing.picker import LeastInFlightPicker, ReplicaView

CLIENT_CLOSED = 499
Send = Callable[[dict], "asyncio.Future[None]"]
Receive = Callable[[], "asyncio.Future[dict]"]


@dataclass
class Outcome:
    """What happened to one request, for metrics and logs."""

    status: int = 0
    endpoint: Endpoint | None = None


def _session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False)


class Relay:
    def __init__(
        self,
        *,
        connect_timeout_s: float,
        request_timeout_s: float,
        picker: LeastInFlightPicker | None = None,
        session_factory: Callable[[], aiohttp.ClientSession] = _session,
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

    async def _open(
        self, endpoints: list[Endpoint], path: str, body: bytes, headers: dict[str, str], outcome: Outcome
    ) -> aiohttp.ClientResponse:
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
        # Once the body is consumed, receive() only returns on disconnect. Before the engine
        # answers (a non-streamed response comes all at the end), a disconnect cancels the
        # call; after, it closes the engine connection. Either way vLLM aborts the request.
        gone = asyncio.ensure_future(_wait_disconnect(receive))
        opening = asyncio.ensure_future(self._open(endpoints, path, body, headers, outcome))
        try:
            await asyncio.wait({gone, opening}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            gone.cancel()
            opening.cancel()
            raise
        if not opening.done():
            opening.cancel()
            outcome.status = CLIENT_CLOSED
            return
        try:
            resp = opening.result()
        except BaseException:
            gone.cancel()
            raise
        rid = outcome.endpoint.replica_id if outcome.endpoint else ""
        self.in_flight[rid] += 1
        gone.add_done_callback(lambda t: None if t.cancelled() else resp.close())
        completed = False
        try:
            if resp.status >= 400:
                raise from_upstream(resp.status, await resp.read())
            out_headers = [(b"x-request-id", request_id.encode())]
            if stream:
                completed = await self._relay_stream(resp, send, out_headers, outcome, gone)
            else:
                data = await resp.read()
                completed = True
                ctype = resp.headers.get("Content-Type", "application/json").encode()
                outcome.status = resp.status
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": [(b"content-type", ctype), (b"content-length", str(len(data)).encode()), *out_headers]})
                await send({"type": "http.response.body", "body": data, "more_body": False})
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            if gone.done():
                outcome.status = CLIENT_CLOSED
                return
            if isinstance(e, asyncio.TimeoutError):
                raise OpenAIError(504, "engine did not answer in time", code="engine_timeout") from None
            raise OpenAIError(502, f"engine connection broke: {e}", code="engine_connection_lost") from None
        finally:
            gone.cancel()
            # A finished response hands its connection back to the pool (keep-alive); an
            # unfinished one must drop it, so that the engine aborts the request.
            if completed and not gone.done():
                resp.release()
            else:
                resp.close()
            self.in_flight[rid] -= 1

    async def _relay_stream(
        self, resp: aiohttp.ClientResponse, send: Send, out_headers: list, outcome: Outcome, gone: asyncio.Future
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"), *out_headers,
        ]})
        outcome.status = 200
        try:
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            if gone.done():  # we closed it because the client went away
                outcome.status = CLIENT_CLOSED
                return False
            # Headers are gone already: end the stream with an SSE error event, not a hang.
            outcome.status = 502
            await send({"type": "http.response.body", "more_body": True,
                        "body": sse_error_event(OpenAIError(502, f"engine stream broke: {e}", code="engine_stream_broken"))})
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
