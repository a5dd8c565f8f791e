"""The OpenAI generation routes as a plain ASGI handler: auth -> body -> validate -> model
-> relay. It bypasses the web framework's middleware stack, which would otherwise wrap
every streamed chunk; all other routes stay on FastAPI (cluster.gateway.app)."""

from __future__ import annotations

import itertools
import logging
import os
from typing import Any

import orjson

from cluster.config.schema import OwcConfig
from cluster.gateway.auth import KeyStore
from cluster.gateway.errors import OpenAIError
from cluster.gateway.metrics import GatewayMetrics
from cluster.gateway.relay import CLIENT_CLOSED, Outcome, Receive, Relay, Send
from cluster.gateway.validation import ChatCompletionRequest, CompletionRequest, parse_json, validate

log = logging.getLogger(__name__)

ROUTES: dict[str, type] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}


class ClientGone(Exception):
    pass


async def read_body(headers: dict[bytes, bytes], receive: Receive, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = headers.get(b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise OpenAIError(400, "invalid Content-Length header", code="invalid_request") from None
        if size > limit:
            raise OpenAIError(413, f"request body exceeds {limit} bytes", code="request_too_large")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise OpenAIError(413, f"request body exceeds {limit} bytes", code="request_too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_error(send: Send, err: OpenAIError, request_id: str | None) -> None:
    body = orjson.dumps(err.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    if request_id:
        headers.append((b"x-request-id", request_id.encode()))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Proxy:
    def __init__(self, *, config: OwcConfig, endpoints: Any, keys: KeyStore, relay: Relay, metrics: GatewayMetrics):
        self._config = config
        self._endpoints = endpoints
        self._keys = keys
        self._relay = relay
        self._metrics = metrics
        self._limit = config.gateway.limits.max_body_bytes
        # Request ids: a random per-process prefix and a counter (uuid4 per request costs a
        # getrandom syscall on the hot path); unique across gateway processes.
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        route = scope["path"]
        headers = dict(scope["headers"])
        request_id = (headers.get(b"x-request-id") or b"").decode("latin-1") or f"{self._id_prefix}{next(self._ids):016x}"
        tenant, model, outcome = "unknown", "unknown", Outcome()
        try:
            auth = headers.get(b"authorization")
            tenant = self._keys.tenant_for(auth.decode("latin-1") if auth else None)
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype != b"application/json":
                raise OpenAIError(415, "Content-Type must be application/json", code="unsupported_media_type")
            body = await read_body(headers, receive, self._limit)
            data = parse_json(body)
            req = validate(data, ROUTES[route])
            served = self._config.resolve(req.model)
            if served is None:
                raise OpenAIError(404, f"The model '{req.model}' does not exist", param="model", code="model_not_found")
            model = served
            if served != req.model:
                data["model"] = served
                body = orjson.dumps(data)
            self._metrics.in_flight.labels(model).inc()
            try:
                await self._relay.forward(
                    receive, send, endpoints=self._endpoints.endpoints(served), path=route, body=body,
                    stream=bool(req.stream), request_id=request_id, outcome=outcome,
                )
            finally:
                self._metrics.in_flight.labels(model).dec()
        except OpenAIError as err:
            outcome.status = err.status
            await send_error(send, err, request_id)
        except ClientGone:
            outcome.status = CLIENT_CLOSED
        except Exception:  # a gateway bug: still an OpenAI-shaped answer if none has started
            log.exception("request %s failed in the gateway", request_id)
            if not outcome.status:
                outcome.status = 500
                await send_error(send, OpenAIError(500, "internal gateway error", type="server_error"), request_id)
        finally:
            self._metrics.requests.labels(model, tenant, route, str(outcome.status or 500)).inc()
