"""The OpenAI-compatible HTTP layer: the generation routes (cluster.gateway.admission) and, on
FastAPI, models, health, readiness and metrics. Every error leaves in the OpenAI shape
(cluster.gateway.errors)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cluster.config.schema import OwcConfig
from cluster.discovery.sources import EndpointSource
from cluster.gateway.access_log import AccessLog
from cluster.gateway.accounting import Accounting
from cluster.gateway.admission import ROUTES, Admission, send_error
from cluster.gateway.auth import KeyStore
from cluster.gateway.engine_client import EngineClient
from cluster.gateway.errors import OpenAIError
from cluster.gateway.forwarder import Forwarder
from cluster.gateway.metrics import GatewayMetrics
from cluster.gateway.stats_poller import StatsPoller
from cluster.gateway.tracing import RequestTracer
from cluster.routing.router import Routing
from cluster.routing.stats import StatsStore


def build_routing(config: OwcConfig) -> Routing:
    """Every model's router from its `routing:` section, over one stats store."""
    store = StatsStore(stale_after_s=config.gateway.routing_stats.stale_after_s)
    return Routing.build({n: m.routing.spec() for n, m in config.models.items()}, stats=store)


def build_app(
    *,
    config: OwcConfig,
    endpoints: EndpointSource,
    keys: KeyStore,
    registry: CollectorRegistry,
    routing: Routing | None = None,
    access_log: AccessLog | None = None,
    tracer: RequestTracer | None = None,
    clock: Callable[[], float] = time.time,
    stats_poller: StatsPoller | None = None,
    poll_stats: bool = True,
) -> GatewayApp:
    """``routing``, ``access_log``, ``tracer`` and the stats poller default to what the
    config asks for."""
    gw = config.gateway
    routing = routing or build_routing(config)
    metrics = GatewayMetrics(registry, replicas=lambda: replica_counts(config, endpoints, routing))
    if stats_poller is None and poll_stats:
        stats_poller = StatsPoller(
            endpoints=lambda: [e for n in config.models for e in endpoints.endpoints(n)], store=routing.stats,
            period_s=gw.routing_stats.period_s, timeout_s=gw.routing_stats.timeout_s,
        )
    metrics.init_models({n: routing.policy(n) for n in config.models}, routing.plugins())
    if access_log is None and gw.access_log.enabled:
        access_log = AccessLog(gw.access_log)
    tracer = tracer or RequestTracer.from_config(gw.tracing)
    forwarder = Forwarder(
        routing=routing, endpoints=endpoints, engine=EngineClient(connect_timeout_s=gw.limits.connect_timeout_s),
        metrics=metrics, request_timeout_s=gw.limits.request_timeout_s, tracer=tracer,
        wake_timeouts={n: m.autoscaling.wake_timeout_s for n, m in config.models.items() if m.wakes_on_request},
    )
    admission = Admission(
        config=config, keys=keys, forwarder=forwarder, metrics=metrics, tracer=tracer,
        accounting=Accounting(metrics=metrics, routing=routing, access_log=access_log),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await endpoints.start()
        if stats_poller is not None:
            await stats_poller.start()
        try:
            yield
        finally:
            if stats_poller is not None:
                await stats_poller.stop()
            await endpoints.stop()
            await forwarder.close()
            if access_log is not None:
                access_log.close()
            if tracer is not None:
                tracer.shutdown()

    app = FastAPI(title="owc gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        msg = "unknown route" if exc.status_code == 404 else str(exc.detail)
        return OpenAIError(exc.status_code, f"{msg}: {request.method} {request.url.path}").response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return OpenAIError(400, str(exc.errors()[0].get("msg", "invalid request"))).response()

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
        models: dict[str, dict] = {}
        for name, _, routable in replica_counts(config, endpoints, routing):
            models[name] = {"replicas": routable}
            if routable == 0 and config.models[name].wakes_on_request:
                models[name]["scaled_to_zero"] = True  # ready: a request wakes it
        ok = all(m["replicas"] > 0 or m.get("scaled_to_zero") for m in models.values())
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

    return GatewayApp(api=app, admission=admission)


def replica_counts(config: OwcConfig, endpoints: EndpointSource, routing: Routing) -> list[tuple[str, int, int]]:
    """(model, registered replicas, routable replicas: healthy and not draining)."""
    out = []
    for name in config.models:
        eps = endpoints.endpoints(name)
        views = routing.views(eps)
        out.append((name, len(eps), sum(1 for v in views if v.healthy and not v.endpoint.draining)))
    return out


class GatewayApp:
    """ASGI entry: the generation routes go to admission, everything else to FastAPI."""

    def __init__(self, *, api: FastAPI, admission: Admission):
        self.api = api
        self._admission = admission

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in ROUTES:
            if scope["method"] == "POST":
                await self._admission(scope, receive, send)
            else:
                err = OpenAIError(405, f"Method Not Allowed: {scope['method']} {scope['path']}", headers={"Allow": "POST"})
                await send_error(send, err, None)
        else:
            await self.api(scope, receive, send)
