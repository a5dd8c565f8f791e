"""The admin API over LoRA adapters (admin keys only, audited by the route table; not
served at all where no admin keys are configured):

- ``GET /admin/v1/adapters``: every model's adapters with per-replica state
- ``GET /admin/v1/models/{model}/adapters``: one model's
- ``POST /admin/v1/models/{model}/adapters`` ``{"name", "source"}``: loaded on every live
  replica, then recorded durably (cluster.adapters.store); 200 when all loaded it, 502 with
  the failures (and nothing recorded) when some did not
- ``DELETE /admin/v1/models/{model}/adapters/{name}``: forgotten, unloaded everywhere"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cluster.gateway.upstream.adapter_loader import AdapterLoader
from cluster.config.base import NAME
from cluster.config.schema import OwcConfig
from cluster.gateway.errors import OpenAIError
from cluster.gateway.routes import RouteTable


def _model(config: OwcConfig, model: str) -> str:
    if model not in config.models:
        raise OpenAIError(404, f"The model '{model}' is not served here", param="model", code="model_not_found")
    return model


def _who(request: Request) -> str | None:
    return getattr(request.state, "admin", None)


def _note(request: Request, **what: Any) -> None:
    """What the call did, for its audit record."""
    request.state.audit = {**getattr(request.state, "audit", {}), **what}


async def _body(request: Request) -> tuple[str, str]:
    try:
        data = await request.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not isinstance(data.get("source"), str) \
            or not data["source"]:
        raise OpenAIError(400, 'expected {"name": "<adapter>", "source": "<directory or hub id>"}')
    if not NAME.match(data["name"]):
        raise OpenAIError(400, f"invalid adapter name {data['name']!r}", param="name")
    return data["name"], data["source"]


def add_adapter_routes(table: RouteTable, *, config: OwcConfig, loader: AdapterLoader) -> None:
    @table.add("GET", "/admin/v1/adapters", "admin")
    async def list_all(request: Request) -> Response:
        return JSONResponse({"models": {m: await loader.state(m) for m in config.models}})

    @table.add("GET", "/admin/v1/models/{model:path}/adapters", "admin")
    async def list_model(request: Request, model: str) -> Response:
        return JSONResponse({"model": model, "adapters": await loader.state(_model(config, model))})

    @table.add("POST", "/admin/v1/models/{model:path}/adapters", "admin")
    async def add(request: Request, model: str) -> Response:
        model = _model(config, model)
        name, source = await _body(request)
        _note(request, model=model, adapter=name, source=source, action="add")
        loader.store.refresh()
        owner = config.resolve(name)
        if owner is not None and not (owner == model and name in loader.store.runtime(model)):
            raise OpenAIError(409, f"the name '{name}' is already served (model or adapter of '{owner}')",
                              param="name", code="name_taken")
        current = config.models[model].adapters.get(name)
        if current is not None and current.source != source:
            # The engines keep the weights loaded under a name (vLLM answers "already loaded"), so a new
            # source under the same name would be recorded and listed without being served.
            raise OpenAIError(409, f"adapter '{name}' is already served from {current.source}: remove it first, "
                              "add the new version under another name, or roll it out as a candidate "
                              "(docs/rollouts.md)", param="source", code="adapter_exists")
        ok, results = await loader.add(model, name, source, _who(request))
        _note(request, replicas=len(results), failed=sum(not r.ok for r in results))
        body = {"model": model, "name": name, "source": source, "added": ok, "replicas": [r.row() for r in results]}
        failed = [r for r in results if not r.ok]
        if failed and all(r.rejected for r in failed):  # the engines refused the adapter itself: the admin's to fix
            body["error"] = {"message": f"the engines refused adapter '{name}' from {source}; it was not added: "
                             f"{failed[0].detail}", "type": "invalid_request_error", "param": "source",
                             "code": "adapter_rejected"}
            return JSONResponse(body, status_code=400)
        if failed:
            body["error"] = {"message": "the adapter did not load on every live replica; it was not added",
                             "type": "server_error", "param": None, "code": "adapter_load_failed"}
        return JSONResponse(body, status_code=200 if ok else 502)

    @table.add("DELETE", "/admin/v1/models/{model:path}/adapters/{name:path}", "admin")
    async def remove(request: Request, model: str, name: str) -> Response:
        model = _model(config, model)
        _note(request, model=model, adapter=name, action="remove")
        loader.store.refresh()
        if name not in config.models[model].adapters:
            raise OpenAIError(404, f"model '{model}' has no adapter '{name}'", param="name", code="adapter_not_found")
        if name not in loader.store.runtime(model):
            raise OpenAIError(409, f"adapter '{name}' is declared in the config file: remove it there",
                              param="name", code="adapter_declared")
        ok, results = await loader.remove(model, name)
        body = {"model": model, "name": name, "removed": True, "unloaded": ok, "replicas": [r.row() for r in results]}
        return JSONResponse(body, status_code=200 if ok else 502)


def build_loader(*, config: OwcConfig, endpoints, metrics, routing, poller=None, engine_key: str | None = None
                 ) -> AdapterLoader:
    """The gateway's adapter loader over the durable store; a load or unload it makes
    reaches routing at once (the stats poller's cached adapter lists, else the stats store)."""
    from cluster.adapters.store import AdapterStore, adapters_file

    loader = AdapterLoader(config=config, endpoints=endpoints, store=AdapterStore(config, adapters_file(config)),
                           metrics=metrics, engine_key=engine_key)
    loader.on_change = poller.adapter_changed if poller is not None else routing.stats.adapter_changed
    return loader
