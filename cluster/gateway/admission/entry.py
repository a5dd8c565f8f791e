"""Admission, the first layer of the generation routes (a plain ASGI handler, so that no
framework middleware wraps every streamed chunk): request id -> auth (tenant) -> body ->
validation -> model and adapter -> tenant limits -> a Job for the forwarder; then the
request is settled (metrics, access log, trace) whatever happened. All other routes stay
on FastAPI (cluster.gateway.app)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re

import orjson

from cluster.adapters.store import AdapterStore
from cluster.config.rollout import has_rollout
from cluster.config.schema import OwcConfig
from cluster.routing.versions import VERSIONS
from cluster.gateway.observability.accounting import UNKNOWN, Accounting, Settled
from cluster.gateway.auth.authenticator import Authenticator, allowed
from cluster.gateway.admission.caps import CapTable
from cluster.gateway.edge.client_writer import client_writer
from cluster.gateway.edge.connections import CLOSED_KEY
from cluster.gateway.responses.conversations import Conversations
from cluster.gateway.responses.ids import ResponseIds
from cluster.gateway.stream.resumable import not_resumable
from cluster.gateway.context import CLIENT_CLOSED, COUNT_TOKENS, MESSAGES, Delivery, Job, Receive, Send
from cluster.gateway.errors import OpenAIError, model_not_found
from cluster.gateway.context import ClientGone
from cluster.gateway.forwarder import Forwarder
from cluster.gateway.admission.tenancy import GatewayTenancy
from cluster.gateway.admission.text_only import non_text_content, note_tool_media
from cluster.gateway.observability.metrics import GatewayMetrics
from cluster.gateway.observability.tracing import RequestTracer
from cluster.gateway.admission.params import CHAT, COMPLETIONS, drop_for_engine
from cluster.gateway.anthropic.requests import CountTokensRequest, MessagesRequest, adaptive_thinking
from cluster.gateway.admission.validation import ChatCompletionRequest, CompletionRequest, ResponsesRequest, parse_json, validate

log = logging.getLogger(__name__)
# The scope key of a batch line (cluster.batch.runner.LineCall) the gateway itself sends through
# admission (cluster.gateway.batches.execute): its tenant is the batch's, no credential is read.
BATCH_LINE = "owc.batch_line"

ROUTES: dict[str, type] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/responses": ResponsesRequest,
    # Anthropic's Messages API: its front-end (cluster.gateway.anthropic) translates the edge.
    "/v1/messages": MessagesRequest,
    "/v1/messages/count_tokens": CountTokensRequest,
}


# A client's X-Request-Id reaches the engine, the response and the access log: bounded and
# plain (UUIDs, ULIDs, base64, W3C trace ids fit).
REQUEST_ID = re.compile(rb"[A-Za-z0-9._~:/+=@-]{1,128}")


def client_request_id(headers: dict[bytes, bytes]) -> str | None:
    """The client's request id, None when it sent none; a 400 when it is not plain."""
    raw = headers.get(b"x-request-id")
    if not raw:
        return None
    if not REQUEST_ID.fullmatch(raw):
        raise OpenAIError(400, "X-Request-Id must be 1-128 characters of A-Z a-z 0-9 . _ ~ : / + = @ -",
                          code="invalid_request_id")
    return raw.decode("ascii")


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


def versioned(send: Send, delivery: Delivery) -> Send:
    """``send`` with ``x-owc-version`` on the response once the forwarder picked a version."""
    async def out(message: dict) -> None:
        if message["type"] == "http.response.start" and delivery.version in VERSIONS:  # not `other`
            message = {**message, "headers": [*message.get("headers", ()), (b"x-owc-version", delivery.version.encode())]}
        await send(message)

    return out


class Admission:
    def __init__(
        self, *, config: OwcConfig, auth: Authenticator, forwarder: Forwarder, accounting: Accounting,
        metrics: GatewayMetrics, tracer: RequestTracer | None = None,
        tenancy: GatewayTenancy | None = None, conversations: Conversations | None = None,
        adapters: AdapterStore | None = None,
    ):
        self._config = config
        self._adapters = adapters  # the run-time adapters (cluster.adapters.store): re-read when a name is new
        self._auth = auth
        self._forwarder = forwarder
        self._accounting = accounting
        self._metrics = metrics
        self._tenancy = tenancy or GatewayTenancy(config, metrics)  # limits, quotas, usage (cluster.tenancy)
        self._tracer = tracer
        # Reasoning policy and Responses affinity (cluster.gateway.responses.conversations).
        self._conversations = conversations or Conversations(config, ResponseIds.from_env(None))
        self._limit = config.gateway.limits.max_body_bytes
        self._caps = CapTable(config.gateway.limits, config.gateway.tenants)
        self._versioned = any(has_rollout(m) for m in config.models.values())
        # Request ids: a random per-process prefix and a counter (uuid4 per request costs a
        # getrandom syscall on the hot path); unique across gateway processes.
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()

    @property
    def tenancy(self):
        """The tenancy (cluster.tenancy.service.Tenancy) whose quotas this admission charges."""
        return self._tenancy.tenancy

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        route = scope["path"]
        headers = dict(scope["headers"])
        request_id = f"{self._id_prefix}{next(self._ids):016x}"
        span = self._tracer.server_span(route, headers) if self._tracer else None
        delivery = Delivery()
        tenant, job, data, status = UNKNOWN, None, None, 0
        writer = client_writer(send)  # a stream's events go straight onto the connection
        ticket = self._tenancy.ticket(send)  # its send adds the x-ratelimit-* headers
        send = ticket.send
        if self._versioned:  # during a rollout every answer says which version gave it
            send = versioned(send, delivery)
        line = scope.get(BATCH_LINE)
        try:
            request_id = client_request_id(headers) or request_id
            if line is not None:  # named also when refused below: the error file's request_id, the access log's
                line.request_id = request_id
            client = scope.get("client")
            tenant = line.tenant if line is not None else self._auth.tenant(headers, client[0] if client else None)
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype != b"application/json":
                raise OpenAIError(415, "Content-Type must be application/json", code="unsupported_media_type")
            body = await read_body(headers, receive, self._limit)
            data = parse_json(body)
            req = validate(data, ROUTES[route])
            self._caps.check(tenant, data)
            if line is not None and req.stream:
                raise OpenAIError(400, "stream is not supported in a batch line", param="stream")
            job = self._job(route, req, data, body,
                            headers=headers, tenant=tenant, request_id=request_id, span=span)
            if line is not None:
                job = dataclasses.replace(job, batch=line)
            job = self._conversations.prepare(job)
            await self._tenancy.admit(ticket, job)  # 429 before any engine sees it
            await self._forwarder.forward(job, receive, send, delivery, writer=writer)
            status = delivery.status
        except OpenAIError as err:
            err = self._conversations.explain(job, err)  # an owner's 404 for a follow-up says why
            status = err.status
            if err.status in (429, 503) and err.code:
                self._metrics.rejections.labels(job.model if job else UNKNOWN, err.code).inc()
            await send_error(send, err, request_id)
        except ClientGone:
            # The connection layer ended a request whose body came too slowly (it answered 408).
            status = 408 if scope.get(CLOSED_KEY) == "body_timeout" else CLIENT_CLOSED
        except Exception:  # a gateway bug: still an OpenAI-shaped answer if none has started
            log.exception("request %s failed in the gateway", request_id)
            status = delivery.status
            if not status:
                status = 500
                await send_error(send, OpenAIError(500, "internal gateway error", type="server_error"), request_id)
        finally:
            await self._tenancy.settle(ticket, status or 500, delivery)  # charged once, for what was received
            self._accounting.settle(Settled(
                request_id=request_id, route=route, status=status or 500, tenant=tenant,
                model=job.model if job else UNKNOWN, adapter=job.adapter if job else None,
                stream=job.stream if job else False, data=data, span=span,
                batch=(line.batch_id, line.custom_id) if line is not None else None,
            ), delivery)

    def _job(self, route: str, req, data: dict, body: bytes, *, headers: dict[bytes, bytes], tenant: str,
             request_id: str, span) -> Job:
        """The request as the engine will receive it: the served model's name (an adapter's
        name reaches the engine unchanged), without the parameters owc accepts and vLLM does
        not take, and a usage event asked for on every chat or completions stream."""
        served = self._config.resolve(req.model)
        store = self._adapters
        if store is not None and (served is None or req.model in self._config.models[served].adapters) \
                and store.refresh():  # run-time adapters another gateway process added or removed just now
            served = self._config.resolve(req.model)
        if served is None:
            raise model_not_found(req.model)
        adapter = req.model if req.model in self._config.models[served].adapters else None
        if not allowed(self._config.gateway.tenants, tenant, served, adapter):
            what = f"adapter '{adapter}'" if adapter and allowed(self._config.gateway.tenants, tenant, served) \
                else f"model '{req.model}'"
            raise OpenAIError(403, f"tenant '{tenant}' may not use {what}", param="model", code="permission_denied")
        rewrite = served != req.model and adapter is None
        if rewrite:
            data["model"] = served
        # OpenAI parameters that change nothing here and that vLLM does not take: not sent.
        rewrite = drop_for_engine(data, route) or rewrite
        strip_usage = False
        # A Responses stream always ends with response.completed, a Messages stream with
        # message_delta: both carry the usage.
        if req.stream and route in (CHAT, COMPLETIONS) and not (data.get("stream_options") or {}).get("include_usage"):
            # Token accounting needs the engine's usage event; the client did not ask for
            # it, so the stream relay drops it again.
            data["stream_options"] = {**(data.get("stream_options") or {}), "include_usage": True}
            strip_usage = rewrite = True
        cfg = self._config.models[served]
        harmony = cfg.harmony(served)
        if harmony:  # text only: vLLM's harmony path would drop media and answer as if it had not been sent
            if (unreadable := non_text_content(route, data, req.model)) is not None:
                raise unreadable
            rewrite = note_tool_media(route, data, req.model) or rewrite
        if harmony and route in (MESSAGES, COUNT_TOKENS) and "reasoning_config" not in cfg.engine_kwargs:
            rewrite = adaptive_thinking(data, route) or rewrite  # a budget gpt-oss's engine cannot enforce
        resume = bool(req.stream) and cfg.resume_streams and \
            not_resumable(route, data, parsed_chat=cfg.parses_chat_output, harmony=harmony) is None
        if resume and route in (CHAT, COMPLETIONS):
            data["return_token_ids"] = rewrite = True
        return Job(request_id=request_id, route=route, model=served, tenant=tenant, data=data,
                   body=orjson.dumps(data) if rewrite else body, stream=bool(req.stream), headers=headers,
                   adapter=adapter, strip_usage=strip_usage, span=span, resume=resume, harmony=harmony,
                   max_model_len=cfg.max_model_len)
