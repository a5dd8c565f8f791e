"""The gateway app, wired: the generation routes (cluster.gateway.admission.entry) and, on
FastAPI, the route table's other routes (cluster.gateway.routes). Every error leaves in the
OpenAI shape (cluster.gateway.errors), but on Anthropic's Messages routes, whose front-end
(cluster.gateway.anthropic) answers in Anthropic's, as do the models routes to an Anthropic
client. Metrics are served by a separate metrics-only app on each process's own port
(``metrics_app``), never on the API port."""

from __future__ import annotations

import os
import resource
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from cluster.config.schema import OwcConfig
from cluster.discovery.rollouts import rollout_store
from cluster.discovery.sources import EndpointSource
from cluster.gateway.observability.access_log import AccessLog
from cluster.gateway.observability.accounting import Accounting
from cluster.gateway.admin.adapters import add_adapter_routes, build_loader
from cluster.gateway.upstream.adapter_loader import record_adapter_requests
from cluster.gateway.admission.entry import ROUTES, Admission, client_request_id, send_error
from cluster.gateway.anthropic import models as anthropic_models
from cluster.gateway.anthropic.frontend import PATHS as ANTHROPIC_PATHS, AnthropicFrontEnd, ErrorShape, with_bearer
from cluster.gateway.auth.authenticator import Authenticator
from cluster.gateway.batches.routes import add_batch_routes
from cluster.gateway.batches.wiring import build_batches
from cluster.gateway.edge.connections import Bounds, ConnectionGuard
from cluster.gateway.upstream.engine_client import EngineClient
from cluster.gateway.errors import OpenAIError
from cluster.gateway.forwarder import Forwarder
from cluster.gateway.observability.metrics import GatewayMetrics
from cluster.gateway.routes import Route, RouteTable, add_routes, error_response, replica_counts
from cluster.gateway.responses.conversations import Conversations
from cluster.gateway.responses.ids import ResponseIds
from cluster.gateway.responses.routes import add_responses_routes
from cluster.gateway.rollout.routes import add_rollout_routes
from cluster.gateway.rollout.mirror import Mirror
from cluster.gateway.rollout.view import RolloutView
from cluster.gateway.upstream.stats_poller import StatsPoller
from cluster.gateway.upstream.stats_share import StatsShareMetrics, build_stats_share
from cluster.gateway.observability.tracing import RequestTracer
from cluster.routing.router import Routing
from cluster.routing.stats import StatsStore
from cluster.gateway.flowcontrol.batch_pacer import BatchPacer
from cluster.gateway.flowcontrol.fair_queue import FairQueue
from cluster.gateway.edge.loop_lag import LoopLag
from cluster.gateway.flowcontrol.shared import SharedSlots


def build_routing(config: OwcConfig) -> Routing:
    """Every model's router from its `routing:` section, over one stats store."""
    store = StatsStore(stale_after_s=config.gateway.routing_stats.stale_after_s)
    return Routing.build({n: m.routing.spec() for n, m in config.models.items()}, stats=store)


def build_fair_queue(config: OwcConfig, *, routing: Routing, endpoints: EndpointSource,
                     metrics: GatewayMetrics) -> FairQueue:
    """The queue in front of saturated engines; a replica's slots are its model's max_num_seqs
    when engine_kwargs set it (else learned from its scrapes)."""
    def max_num_seqs(m) -> int | None:
        v = m.engine_kwargs.get("max_num_seqs")
        return v if isinstance(v, int) and v > 0 else None

    b = config.batch
    return FairQueue(policy=config.gateway.fair_sharing, tenants=config.gateway.tenants,
                     max_num_seqs={n: max_num_seqs(m) for n, m in config.models.items()}, routing=routing,
                     endpoints=endpoints.endpoints, metrics=metrics, shared=build_shared_slots(config, metrics),
                     batch_unknown_limit=config.batch.lines_on_unknown_capacity, batch_keep_free=config.batch.keep_free,
                     batch_pacer=None if b.ttft_tolerance is None else BatchPacer(
                         max_lines=b.lines_in_flight, tolerance=b.ttft_tolerance, window_s=b.pace_window_s))


def build_shared_slots(config: OwcConfig, metrics: GatewayMetrics) -> SharedSlots | None:
    """The fair queue's counts shared with the other gateway processes while a model is
    saturated, through fair_sharing.store_url or gateway.store's Redis; None: per process."""
    fs, store = config.gateway.fair_sharing, config.gateway.store
    url = fs.store_url or (store and ((os.environ.get(store.url_env) if store.url_env else None) or store.url))
    metrics.fair_share_up.set(0)
    if not (fs.enabled and fs.share_across_gateways and url):
        return None
    from cluster.tenancy.slot_share import RedisSlotShare

    peers = RedisSlotShare(url, timeout_s=fs.store_timeout_s, on_up=lambda up: metrics.fair_share_up.set(int(up)),
                           on_error=metrics.fair_share_errors.inc, on_exchange=metrics.fair_share_exchanges.inc)
    return SharedSlots(peers, threshold=fs.headroom + fs.dispatch_margin, notify=fs.notify_releases)


def build_app(
    *,
    config: OwcConfig,
    endpoints: EndpointSource,
    auth: Authenticator,
    registry: CollectorRegistry,
    routing: Routing | None = None,
    access_log: AccessLog | None = None,
    tracer: RequestTracer | None = None,
    clock: Callable[[], float] = time.time,
    stats_poller: StatsPoller | None = None,
    poll_stats: bool = True,
    engine_key: str | None = None,
    open_files: int | None = None,
    process: str | None = None,
) -> GatewayApp:
    """``routing``, ``access_log``, ``tracer`` and the stats poller default to what the
    config asks for; ``engine_key`` goes with every call to an engine; ``open_files``: the
    process's open-file limit the connection bound is derived from (default: its soft limit);
    ``process``: the id /ready answers with (default: a random one, one per app)."""
    gw = config.gateway
    routing = routing or build_routing(config)
    metrics = GatewayMetrics(registry, replicas=lambda: replica_counts(config, endpoints, routing))
    record_adapter_requests(registry, routing, config)  # owc_adapter_requests_total{found}
    open_files = open_files or resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    connections = ConnectionGuard(Bounds.from_limits(gw.limits, open_files),
                                  on_close=lambda reason: metrics.connections_closed.labels(reason).inc())
    metrics.connections.set_function(lambda: connections.live)
    auth.on_failure = metrics.auth_failed
    if auth.reloader is not None:
        auth.reloader.on_result = lambda keys, result: metrics.key_reloads.labels(keys, result).inc()
    if stats_poller is None and poll_stats:
        stats_metrics = StatsShareMetrics(registry)  # one scrape per engine shared by the processes (stats_share)
        stats_poller = StatsPoller(
            endpoints=lambda: [e for n in config.models for e in endpoints.endpoints(n)], store=routing.stats,
            period_s=gw.routing_stats.period_s, timeout_s=gw.routing_stats.timeout_s, engine_key=engine_key,
            share=build_stats_share(config, stats_metrics), metrics=stats_metrics,
        )
    metrics.init_models({n: routing.policy(n) for n in config.models}, routing.plugins())
    if access_log is None and gw.access_log.enabled:
        access_log = AccessLog(gw.access_log)
    tracer = tracer or RequestTracer.from_config(gw.tracing)
    engine_client = EngineClient(connect_timeout_s=gw.limits.connect_timeout_s, key=engine_key)
    conversations = Conversations(config, ResponseIds.from_env(engine_key))  # responses affinity, reasoning policy
    fair = build_fair_queue(config, routing=routing, endpoints=endpoints, metrics=metrics)
    if stats_poller is not None:
        stats_poller.on_scrape = fair.scraped
    forwarder = Forwarder(
        routing=routing, endpoints=endpoints, engine=engine_client,
        metrics=metrics, request_timeout_s=gw.limits.request_timeout_s, tracer=tracer,
        wake_timeouts={n: m.autoscaling.wake_timeout_s for n, m in config.models.items() if m.wakes_on_request},
        fair=fair,
    )
    forwarder.adapters = adapters = build_loader(config=config, endpoints=endpoints, metrics=metrics, routing=routing,
                                                 poller=stats_poller, engine_key=engine_key)  # LoRA adapters
    accounting = Accounting(metrics=metrics, routing=routing, access_log=access_log,
                            interactive_ttft=fair.batch_pacer.interactive_ttft if fair.batch_pacer else None)
    versions = RolloutView(config, rollout_store(config.model_cache_dir))  # rollouts (docs/rollouts.md)
    if versions.targets:  # a model's or an adapter's candidate
        forwarder.versions = versions
        registry.register(versions)  # owc_rollout_* (docs/metrics.md)
    if versions.mirrored:  # mirror mode: copies for the candidate, off the clients' path
        forwarder.mirror = Mirror(
            view=versions, endpoints=endpoints, routing=routing, open=forwarder.open, settle=accounting.settle,
            metrics=metrics, queue={n: config.models[n].rollout.mirror_queue for n in versions.mirrored},
            timeout_s=gw.limits.request_timeout_s,
        )
    admission = Admission(
        config=config, auth=auth, forwarder=forwarder, metrics=metrics, tracer=tracer,
        accounting=accounting, conversations=conversations, adapters=adapters.store,
    )

    lag = LoopLag(metrics.loop_lag.set)
    # The Batch API's files and batches, and the runner whose lines go through this admission; None when off.
    batches = build_batches(config, admission=admission, registry=registry)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await lag.start()
        await endpoints.start()
        await adapters.start()
        await versions.start()
        if stats_poller is not None:
            await stats_poller.start()
        if auth.jwt is not None:
            await auth.jwt.start()
        if auth.reloader is not None:
            await auth.reloader.start()
        if batches is not None:
            await batches.start()
        try:
            yield
        finally:
            if batches is not None:
                await batches.stop()
            if auth.reloader is not None:
                await auth.reloader.stop()
            if auth.jwt is not None:
                await auth.jwt.stop()
            if stats_poller is not None:
                await stats_poller.stop()
            await endpoints.stop()
            if forwarder.mirror is not None:
                await forwarder.mirror.close()
            await forwarder.close()
            await versions.stop()
            await adapters.close()
            if access_log is not None:
                access_log.close()
            if tracer is not None:
                tracer.shutdown()
            await lag.stop()

    app = FastAPI(title="owc gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        msg = "unknown route" if exc.status_code == 404 else str(exc.detail)
        return error_response(OpenAIError(exc.status_code, f"{msg}: {request.method} {request.url.path}"))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(OpenAIError(400, str(exc.errors()[0].get("msg", "invalid request"))))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        return error_response(OpenAIError(500, f"internal gateway error: {type(exc).__name__}", type="server_error"))

    table = RouteTable(app, auth, audit=access_log.write if access_log is not None else None)
    add_routes(table, config=config, endpoints=endpoints, routing=routing, clock=clock,
               process=process or uuid.uuid4().hex[:12])
    if auth.admin_configured:  # no admin keys: no adapter admin routes (404)
        add_adapter_routes(table, config=config, loader=adapters)
        add_rollout_routes(table, config=config, view=versions)
    add_responses_routes(table, config=config, endpoints=endpoints, engine=engine_client, ids=conversations.ids)
    if batches is not None:
        add_batch_routes(table, service=batches.service)
    return GatewayApp(api=app, admission=admission, table=table, connections=connections)


class GatewayApp:
    """ASGI entry: the generation routes go to admission, everything else to FastAPI.
    ``connections``: the bounds the HTTP server applies to this app's connections."""

    def __init__(self, *, api: FastAPI, admission: Admission, table: RouteTable, connections: ConnectionGuard):
        self.api = api
        self._admission = admission
        self._anthropic = AnthropicFrontEnd(admission)  # Anthropic's Messages API, over the same admission
        self._table = table
        self.connections = connections

    def route_table(self) -> list[Route]:
        """Every route this app serves, with its access class."""
        return [Route("POST", path, "tenant") for path in ROUTES] + list(self._table.routes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in ANTHROPIC_PATHS:
            await self._anthropic(scope, receive, send)
        elif scope["type"] == "http" and anthropic_models.is_anthropic(scope):
            # Anthropic's SDK listing models: its key header, its error shape, its request-id
            scope = {**scope, "headers": with_bearer(list(scope["headers"]))}
            await self.api(scope, receive, with_request_id(ErrorShape(send), request_id(scope)))
        elif scope["type"] == "http" and scope["path"] in ROUTES:
            if scope["method"] == "POST":
                await self._admission(scope, receive, send)
            else:
                err = OpenAIError(405, f"Method Not Allowed: {scope['method']} {scope['path']}", headers={"Allow": "POST"})
                await send_error(send, err, request_id(scope))
        elif scope["type"] == "http":
            await self.api(scope, receive, with_request_id(send, request_id(scope)))
        else:
            await self.api(scope, receive, send)


def request_id(scope: dict) -> str:
    """A FastAPI route's request id: the client's X-Request-Id when it is plain (admission's
    check, which refuses the rest with a 400; here they are replaced), else a new one."""
    try:
        return client_request_id(dict(scope["headers"])) or os.urandom(16).hex()
    except OpenAIError:
        return os.urandom(16).hex()


def with_request_id(send: Any, rid: str) -> Any:
    """``send`` with ``x-request-id`` on the response, as OpenAI puts it on every answer (its SDK
    reads it for ``_request_id`` and ``APIStatusError.request_id``) and the generation routes do."""
    value = rid.encode()

    async def out(message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(k.lower() == b"x-request-id" for k, _ in headers):
                message = {**message, "headers": [*headers, (b"x-request-id", value)]}
        await send(message)

    return out


def metrics_app(registry: CollectorRegistry) -> Any:
    """The metrics-only ASGI app of a gateway process's own metrics port (never the API
    port): GET /metrics, and 404 for anything else."""
    exporter = make_asgi_app(registry=registry)

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            await exporter(scope, receive, send)
        elif scope["type"] == "http":
            await send_error(send, OpenAIError(404, f"unknown route: {scope['method']} {scope['path']} "
                                               "(this port serves GET /metrics only)"), None)

    return app
