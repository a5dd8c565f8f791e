"""The gateway's routes other than generation, on FastAPI: health, readiness, models and
the admin API — and the one route table every route is declared in with its access class
(public, tenant, admin). The check is applied by the table itself, so a handler cannot
forget it, and the auth tests enumerate the table (a route added later is covered the day
it appears)."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cluster.config.schema import OwcConfig
from cluster.discovery.sources import EndpointSource
from cluster.gateway.anthropic import models as anthropic_models
from cluster.gateway.auth.authenticator import Authenticator, Principal, allowed
from cluster.gateway.errors import OpenAIError, model_not_found
from cluster.routing.router import Routing

Access = Literal["public", "tenant", "admin"]


def error_response(err: OpenAIError, extra_headers: dict[str, str] | None = None) -> Response:
    """An OpenAIError as the FastAPI routes answer it: its status, headers and JSON body."""
    return Response(orjson.dumps(err.body()), status_code=err.status, media_type="application/json",
                    headers={**err.headers, **(extra_headers or {})})


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    access: Access


class RouteTable:
    """Registers FastAPI routes with their access class and enforces it."""

    def __init__(self, api: FastAPI, auth: Authenticator, *, audit: Callable[[dict[str, Any]], None] | None = None):
        self.api = api
        self._auth = auth
        self._audit = audit
        self.routes: list[Route] = []

    def add(self, method: str, path: str, access: Access) -> Callable:
        def register(handler: Callable[..., Awaitable[Response]]) -> Callable:
            @functools.wraps(handler)
            async def guarded(request: Request, **kwargs: Any) -> Response:
                client = request.client.host if request.client else None
                headers = dict(request.headers.raw)
                if access == "tenant":
                    request.state.tenant = self._auth.tenant(headers, client)
                elif access == "admin":
                    try:
                        admin = self._auth.admin(headers, client)
                    except OpenAIError as err:
                        self._audited(None, request, err.status)  # refused attempts are audited too
                        raise
                    request.state.admin = admin.name
                    try:
                        response = await handler(request, **kwargs)
                    except OpenAIError as err:
                        self._audited(admin, request, err.status)  # a refused admin call is audited too
                        raise
                    self._audited(admin, request, response.status_code)
                    return response
                return await handler(request, **kwargs)

            self.api.add_api_route(path, guarded, methods=[method])
            self.routes.append(Route(method, path, access))
            return guarded

        return register

    def _audited(self, admin: Principal | None, request: Request, status: int) -> None:
        if self._audit is not None:
            self._audit({"admin": admin.name if admin else None, "method": request.method, "route": request.url.path,
                         "status": status, "client": request.client.host if request.client else None,
                         **getattr(request.state, "audit", {})})  # what the call did (adapter routes)


def add_routes(
    table: RouteTable, *, config: OwcConfig, endpoints: EndpointSource, routing: Routing,
    clock: Callable[[], float] = time.time, process: str = "",
) -> None:
    """``process``: this gateway process's id, in /ready's answer (`owc serve` waits until every
    process sharing the port has answered ready, cluster.readiness)."""
    tenants = config.gateway.tenants
    started = int(clock())  # a model's `created`: when this gateway began serving it, the same on every call

    def model_card(name: str) -> dict[str, Any]:
        m = config.models[name]
        card: dict[str, Any] = {"id": name, "object": "model", "created": started, "owned_by": "owc"}
        if m.max_model_len:
            card["max_model_len"] = m.max_model_len
        card["aliases"] = list(m.aliases)
        return card

    def adapter_card(name: str, adapter: str) -> dict[str, Any]:
        return {"id": adapter, "object": "model", "created": started, "owned_by": "owc", "parent": name}

    @table.add("GET", "/health", "public")
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @table.add("GET", "/ready", "public")
    async def ready(request: Request) -> Response:
        models: dict[str, dict] = {}
        for name, _, routable in replica_counts(config, endpoints, routing):
            models[name] = {"replicas": routable}
            if routable == 0 and config.models[name].wakes_on_request:
                models[name]["scaled_to_zero"] = True  # ready: a request wakes it
        ok = all(m["replicas"] > 0 or m.get("scaled_to_zero") for m in models.values())
        return JSONResponse({"ready": ok, "models": models, "process": process}, status_code=200 if ok else 503)

    @table.add("GET", "/v1/models", "tenant")
    async def list_models(request: Request) -> Response:
        tenant = request.state.tenant
        cards = [model_card(n) for n in config.models if allowed(tenants, tenant, n)]
        cards += [adapter_card(n, a) for n, m in config.models.items() for a in list(m.adapters)
                  if allowed(tenants, tenant, n, a)]  # LoRA adapters, each with its parent model
        if anthropic_models.is_anthropic(request.scope):  # an Anthropic client (app.py's dispatch): its page
            return JSONResponse(anthropic_models.page(cards, request.query_params))
        return JSONResponse({"object": "list", "data": cards})

    @table.add("GET", "/v1/models/{model:path}", "tenant")
    async def get_model(request: Request, model: str) -> Response:
        served = config.resolve(model)
        adapter = model if served is not None and model in config.models[served].adapters else None
        if served is None or not allowed(tenants, request.state.tenant, served, adapter):
            raise model_not_found(model)
        card = adapter_card(served, adapter) if adapter else model_card(served)
        if anthropic_models.is_anthropic(request.scope):
            return JSONResponse(anthropic_models.model(card))
        return JSONResponse(card)

    @table.add("GET", "/admin/v1/replicas", "admin")
    async def admin_replicas(request: Request) -> Response:
        """Every model's replicas as this gateway process sees them: URL, draining,
        healthy, its own requests on each, the last engine stats."""
        out = {name: [_replica_row(v) for v in routing.views(endpoints.endpoints(name))] for name in config.models}
        return JSONResponse({"models": out})


def _replica_row(view: Any) -> Mapping[str, Any]:
    s = view.stats
    return {
        "replica_id": view.replica_id, "url": view.endpoint.url, "draining": view.endpoint.draining,
        "healthy": view.healthy, "in_flight": view.in_flight,
        "stats": None if s is None else {"waiting": s.waiting, "running": s.running, "kv_usage": s.kv_usage,
                                         "adapters": sorted(s.adapters)},
    }


def replica_counts(config: OwcConfig, endpoints: EndpointSource, routing: Routing) -> list[tuple[str, int, int]]:
    """(model, registered replicas, routable replicas: healthy and not draining)."""
    out = []
    for name in config.models:
        eps = endpoints.endpoints(name)
        views = routing.views(eps)
        out.append((name, len(eps), sum(1 for v in views if v.healthy and not v.endpoint.draining)))
    return out
