"""The OpenAI generation routes as a plain ASGI handler: auth -> body -> validate -> model
-> relay. It bypasses the web framework's middleware stack, which would otherwise wrap
every streamed chunk; all other routes stay on FastAPI (cluster.gateway.app)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import Any

import orjson

from cluster.config.schema import OwcConfig
from cluster.gateway.access_log import AccessLog, prompt_of
from cluster.gateway.auth import KeyStore
from cluster.gateway.errors import OpenAIError
from cluster.gateway.limits import TenantLimiter
from cluster.gateway.metrics import GatewayMetrics
from cluster.gateway.relay import CLIENT_CLOSED, Outcome, Receive, Relay, Send, wait_disconnect
from cluster.gateway.tracing import RequestTracer
from cluster.gateway.validation import ChatCompletionRequest, CompletionRequest, parse_json, validate
from cluster.routing.keys import prefix_key, session_key
from cluster.routing.types import RequestInfo

log = logging.getLogger(__name__)

ROUTES: dict[str, type] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}


class ClientGone(Exception):
    pass


def _taking_requests(endpoints: list) -> bool:
    """Some replica is registered and not draining (a model at zero has none)."""
    return any(not e.draining for e in endpoints)


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
    def __init__(
        self, *, config: OwcConfig, endpoints: Any, keys: KeyStore, relay: Relay, metrics: GatewayMetrics,
        limiter: TenantLimiter | None = None, access_log: AccessLog | None = None, tracer: RequestTracer | None = None,
    ):
        self._config = config
        self._endpoints = endpoints
        self._keys = keys
        self._relay = relay
        self._metrics = metrics
        self._limiter = limiter or TenantLimiter(config.gateway.tenants)
        self._access_log = access_log
        self._tracer = tracer
        self._limit = config.gateway.limits.max_body_bytes
        # Request ids: a random per-process prefix and a counter (uuid4 per request costs a
        # getrandom syscall on the hot path); unique across gateway processes.
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        route = scope["path"]
        headers = dict(scope["headers"])
        request_id = (headers.get(b"x-request-id") or b"").decode("latin-1") or f"{self._id_prefix}{next(self._ids):016x}"
        tenant, model, outcome, data = "unknown", "unknown", Outcome(), None
        span = self._tracer.server_span(route, headers) if self._tracer else None
        stream = False
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
            model, stream = served, bool(req.stream)
            release = self._limiter.admit(tenant)
            try:
                await self._forward(receive, send, headers, data, body, route, served, req, request_id, outcome, span)
            finally:
                release()
        except OpenAIError as err:
            outcome.status = err.status
            if err.status in (429, 503) and err.code:
                self._metrics.rejections.labels(model, err.code).inc()
            await send_error(send, err, request_id)
        except ClientGone:
            outcome.status = CLIENT_CLOSED
        except Exception:  # a gateway bug: still an OpenAI-shaped answer if none has started
            log.exception("request %s failed in the gateway", request_id)
            if not outcome.status:
                outcome.status = 500
                await send_error(send, OpenAIError(500, "internal gateway error", type="server_error"), request_id)
        finally:
            self._record(route, model, tenant, request_id, stream, outcome, data, span)

    async def _forward(
        self, receive: Receive, send: Send, headers: dict[bytes, bytes], data: dict, body: bytes, route: str,
        served: str, req: Any,
        request_id: str, outcome: Outcome, span: Any,
    ) -> None:
        mc = self._config.models[served]
        adapter = req.model if req.model in mc.adapters else None
        rewrite = served != req.model and adapter is None  # an adapter's name reaches the engine unchanged
        if rewrite:
            data["model"] = served
        if req.stream and not (data.get("stream_options") or {}).get("include_usage"):
            # Token accounting needs the engine's usage event; the client did not ask for
            # it, so the relay drops it again.
            data["stream_options"] = {**(data.get("stream_options") or {}), "include_usage": True}
            outcome.strip_usage = rewrite = True
        if rewrite:
            body = orjson.dumps(data)
        m = self._metrics
        in_flight, queued = m.in_flight.labels(served), m.queued.labels(served)
        in_flight.inc()
        queued.inc()
        answered = False

        def on_answer() -> None:
            nonlocal answered
            if not answered:
                answered = True
                queued.dec()

        outcome.on_answer = on_answer
        engine_span, trace_headers = self._tracer.engine_span(span, served) if span is not None else (None, None)
        routing = mc.routing
        try:
            endpoints = self._endpoints.endpoints(served)
            if mc.wakes_on_request and not _taking_requests(endpoints):
                # Scaled to zero: hold the request (it counts as in flight, which is what wakes
                # the model through the controller) until a replica registers.
                endpoints = await self._wait_for_replica(served, mc.autoscaling.wake_timeout_s, receive)
            # The prefix key only where a prefix scorer will read it (rendering it is per-request work).
            prefix = prefix_key(data, routing.prefix_chars) if self._relay.routing.uses_prefix(served) else b""
            info = RequestInfo(model=served, prefix_key=prefix, session_key=session_key(headers, data), adapter=adapter)
            await self._relay.forward(
                receive, send, endpoints=endpoints, route=info, path=route, body=body,
                stream=bool(req.stream), request_id=request_id, outcome=outcome, extra_headers=trace_headers,
            )
        finally:
            on_answer()
            in_flight.dec()
            if engine_span is not None:
                RequestTracer.finish(engine_span, outcome.status or 500, {
                    "server.address": outcome.endpoint.url if outcome.endpoint else None,
                    "owc.replica_id": outcome.endpoint.replica_id if outcome.endpoint else None,
                })

    async def _wait_for_replica(self, model: str, timeout_s: float, receive: Receive) -> list:
        """The model's endpoints once one is routable; a client that leaves meanwhile stops
        the wait (it no longer counts in flight, so it no longer keeps the model awake)."""
        deadline = time.monotonic() + timeout_s
        gone = asyncio.ensure_future(wait_disconnect(receive))
        try:
            while time.monotonic() < deadline:
                await asyncio.wait({gone}, timeout=0.1)
                if gone.done():
                    raise ClientGone()
                endpoints = self._endpoints.endpoints(model)
                if _taking_requests(endpoints):
                    return endpoints
        finally:
            gone.cancel()
        raise OpenAIError(503, f"model {model} is scaled to zero and no replica started within {timeout_s:g}s",
                          code="no_healthy_replica", headers={"Retry-After": "10"})

    def _record(
        self, route: str, model: str, tenant: str, request_id: str, stream: bool, outcome: Outcome,
        data: dict | None, span: Any,
    ) -> None:
        m = self._metrics
        status = outcome.status or 500
        latency = time.perf_counter() - outcome.started
        m.requests.labels(model, tenant, route, str(status)).inc()
        if model != "unknown":
            m.duration.labels(model, route).observe(latency)
        if outcome.decisions:
            policy = self._relay.routing.policy(model)
            m.decisions.labels(model, policy).inc(len(outcome.decisions))
            hist = m.decision_seconds.labels(policy)
            for d in outcome.decisions:
                hist.observe(d)
            for plugin, seconds in outcome.plugin_timings:
                m.observe_plugin(plugin, seconds)
        for reason in outcome.retry_reasons:
            m.retries.labels(model, reason).inc()
        if outcome.ttft_s is not None:
            m.ttft.labels(model).observe(outcome.ttft_s)
        if outcome.itl:
            hist = m.itl.labels(model)
            for gap in outcome.itl:
                hist.observe(gap)
        if outcome.prompt_tokens:
            m.prompt_tokens.labels(model, tenant).inc(outcome.prompt_tokens)
        if outcome.completion_tokens:
            m.completion_tokens.labels(model, tenant).inc(outcome.completion_tokens)
        if span is not None:
            RequestTracer.finish(span, status, {
                "owc.request_id": request_id, "owc.tenant": tenant, "gen_ai.request.model": model,
                "gen_ai.usage.input_tokens": outcome.prompt_tokens, "gen_ai.usage.output_tokens": outcome.completion_tokens,
            })
        if self._access_log is not None:
            record = {
                "request_id": request_id, "tenant": tenant, "model": model, "route": route, "status": status,
                "stream": stream, "prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
                "latency_s": round(latency, 6), "ttft_s": None if outcome.ttft_s is None else round(outcome.ttft_s, 6),
                "replica": outcome.endpoint.replica_id if outcome.endpoint else None, "retries": outcome.retries,
            }
            if self._access_log.include_prompts and data is not None:
                record["prompt"] = prompt_of(data)
            self._access_log.write(record)
