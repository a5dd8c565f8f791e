"""Anthropic's Messages API as a second protocol front-end: ``POST /v1/messages`` (streamed and
not) and ``POST /v1/messages/count_tokens`` go through the very admission and forwarding the
OpenAI routes use (auth, allow-lists, tenant limits, fair queue, routing, retries, relay,
accounting); this front-end only translates what differs at the edge:

- the tenant's key as Anthropic's SDK sends it (``x-api-key``) becomes the credential
  admission reads (``Authorization: Bearer``); the ``x-api-key`` header is removed, so it
  cannot reach anything behind (the engine gets only the engine credential, as always);
- every error answered before a stream started leaves in Anthropic's shape with its status
  (cluster.gateway.anthropic.errors); errors after (``event: error``) are written in that
  shape by the stream relay (cluster.gateway.stream.messages);
- every answer carries the request id as Anthropic names it, ``request-id`` (Anthropic's SDK
  reads that header for ``Message._request_id``, ``MessageStream.request_id`` and
  ``APIStatusError.request_id``), beside owc's ``x-request-id``;
- a tenant's limits go out as Anthropic's ``anthropic-ratelimit-*`` headers beside OpenAI's
  ``x-ratelimit-*`` (cluster.gateway.anthropic.ratelimit).

``?beta=true`` (Claude Code's) is a query string: the route is its path, the query is ignored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson

from cluster.gateway.anthropic.errors import anthropic_error, error_body
from cluster.gateway.anthropic.ratelimit import anthropic_headers
from cluster.gateway.context import COUNT_TOKENS, MESSAGES, Receive, Send

PATHS = (MESSAGES, COUNT_TOKENS)
ASGI = Callable[[dict, Receive, Send], Awaitable[None]]


def with_bearer(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request's headers with ``x-api-key`` turned into ``authorization: Bearer`` (an
    ``Authorization`` header the client sent itself wins) and the ``x-api-key`` header gone."""
    key = next((v for k, v in headers if k.lower() == b"x-api-key"), None)
    if key is None:
        return headers
    out = [(k, v) for k, v in headers if k.lower() != b"x-api-key"]
    if not any(k.lower() == b"authorization" for k, _ in out):
        out.append((b"authorization", b"Bearer " + key.strip()))
    return out


def with_request_id(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with Anthropic's ``request-id`` beside ``x-request-id`` (same value)."""
    headers = list(headers)
    rid = next((v for k, v in headers if k.lower() == b"x-request-id"), None)
    if rid is None or any(k.lower() == b"request-id" for k, _ in headers):
        return headers
    return [*headers, (b"request-id", rid)]


class ErrorShape:
    """A ``send`` that rewrites an error response (status >= 400, a whole JSON body) into
    Anthropic's shape; anything else passes as it is (a stream starts with 200), with the
    ``request-id`` header Anthropic's SDK reads."""

    __slots__ = ("_send", "_start")

    def __init__(self, send: Send):
        self._send = send
        self._start: dict | None = None

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = with_request_id(message.get("headers", ()))
            message = {**message, "headers": headers + anthropic_headers(headers)}  # the limits, as Anthropic writes them
            if message["status"] >= 400:
                self._start = message  # held until its body is known
                return
        if self._start is not None and message["type"] == "http.response.body":
            start, self._start = self._start, None
            body = anthropic_error(start["status"], message.get("body", b""))
            headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() not in (b"content-length", b"content-type")]
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await self._send({**start, "headers": headers})
            await self._send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await self._send(message)


class AnthropicFrontEnd:
    """The ASGI handler of PATHS, in front of ``admission`` (the same callable that serves the
    OpenAI generation routes)."""

    def __init__(self, admission: ASGI):
        self._admission = admission

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _error(send, 405, f"Method Not Allowed: {scope['method']} {scope['path']}", {b"allow": b"POST"})
            return
        scope = {**scope, "headers": with_bearer(list(scope["headers"]))}
        await self._admission(scope, receive, ErrorShape(send))


async def _error(send: Send, status: int, message: str, headers: dict[bytes, bytes] | None = None) -> None:
    body = orjson.dumps(error_body(status, message))
    out: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    out += list((headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body, "more_body": False})
