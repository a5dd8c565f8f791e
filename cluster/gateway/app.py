"""The OpenAI-compatible HTTP layer. Handlers translate HTTP <-> the relay; every error
becomes the OpenAI shape in one handler (cluster.gateway.errors)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import aiohttp
import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from cluster.config.schema import OwcConfig
from cluster.gateway.auth import KeyStore
from cluster.gateway.errors import OpenAIError
from cluster.gateway.metrics import GatewayMetrics
from cluster.gateway.relay import Outcome, Relay
from cluster.gateway.validation import ChatCompletionRequest, CompletionRequest, parse_json, validate
from cluster.routing.endpoints import Endpoint


class EndpointSource(Protocol):
    def endpoints(self, model: str) -> list[Endpoint]: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def _session_factory(limit: int) -> Callable[[], aiohttp.ClientSession]:
    def make() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=limit, ttl_dns_cache=None, enable_cleanup_closed=False)
        return aiohttp.ClientSession(connector=connector, auto_decompress=False)

    return make


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise OpenAIError(413, f"request body exceeds {limit} bytes", code="request_too_large")
        except ValueError:
            raise OpenAIError(400, "invalid Content-Length header", code="invalid_request") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise OpenAIError(413, f"request body exceeds {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(
    *,
    config: OwcConfig,
    endpoints: EndpointSource,
    keys: KeyStore,
    registry: CollectorRegistry,
    relay: Relay | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    limits = config.gateway.limits
    relay = relay or Relay(
        session_factory=_session_factory(limit=0),
        connect_timeout_s=limits.connect_timeout_s,
        request_timeout_s=limits.request_timeout_s,
    )
    metrics = GatewayMetrics(registry)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await endpoints.start()
        try:
            yield
        finally:
            await endpoints.stop()
            await relay.close()

    app = FastAPI(title="owc gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> Response:
        return exc.response({"x-request-id": request.state.request_id} if hasattr(request.state, "request_id") else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        msg = "unknown route" if exc.status_code == 404 else str(exc.detail)
        return OpenAIError(exc.status_code, f"{msg}: {request.method} {request.url.path}").response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return OpenAIError(400, str(exc.errors()[0].get("msg", "invalid request"))).response()

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        return OpenAIError(500, f"internal gateway error: {type(exc).__name__}", type="server_error").response()

    def model_card(name: str) -> dict[str, Any]:
        m = config.models[name]
        card: dict[str, Any] = {"id": name, "object": "model", "created": int(clock()), "owned_by": "owc"}
        if m.max_model_len:
            card["max_model_len"] = m.max_model_len
        card["aliases"] = list(m.aliases)
        return card

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> Response:
        models = {name: {"replicas": len(endpoints.endpoints(name))} for name in config.models}
        ok = all(m["replicas"] > 0 for m in models.values())
        return JSONResponse({"ready": ok, "models": models}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        keys.tenant_for(request.headers.get("authorization"))
        return JSONResponse({"object": "list", "data": [model_card(n) for n in config.models]})

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> Response:
        keys.tenant_for(request.headers.get("authorization"))
        served = config.resolve(model)
        if served is None:
            raise OpenAIError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")
        return JSONResponse(model_card(served))

    async def proxy(request: Request, route: str, schema: type) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        tenant = keys.tenant_for(request.headers.get("authorization"))
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise OpenAIError(415, "Content-Type must be application/json", code="unsupported_media_type")
        body = await read_body(request, limits.max_body_bytes)
        data = parse_json(body)
        req = validate(data, schema)
        served = config.resolve(req.model)
        if served is None:
            raise OpenAIError(404, f"The model '{req.model}' does not exist", param="model", code="model_not_found")
        if served != req.model:
            data["model"] = served
            body = orjson.dumps(data)
        outcome = Outcome()
        metrics.in_flight.labels(served).inc()
        done = False

        def on_done() -> None:
            nonlocal done
            if done:
                return
            done = True
            metrics.in_flight.labels(served).dec()
            metrics.requests.labels(served, tenant, route, str(outcome.status or 500)).inc()

        try:
            return await relay.forward(
                request,
                endpoints=endpoints.endpoints(served),
                path=route,
                body=body,
                stream=bool(req.stream),
                request_id=request_id,
                outcome=outcome,
                on_done=on_done,
            )
        except OpenAIError as e:
            outcome.status = e.status
            on_done()
            raise

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await proxy(request, "/v1/chat/completions", ChatCompletionRequest)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await proxy(request, "/v1/completions", CompletionRequest)

    return app
