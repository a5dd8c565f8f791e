"""`GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel`, sent to the engine replica
that holds the response (its id names it: cluster.gateway.responses.ids). An id the gateway
cannot verify for the caller's tenant, or whose replica is gone or draining, answers vLLM's
404. vLLM 0.32 has no DELETE for responses, so neither has owc. Tenant access, in the route
table (the auth matrix covers both)."""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from cluster.config.schema import OwcConfig
from cluster.discovery.endpoints import Endpoint
from cluster.discovery.sources import EndpointSource
from cluster.gateway.auth.authenticator import allowed
from cluster.gateway.upstream.engine_client import EngineClient, EngineError
from cluster.gateway.errors import OpenAIError, from_upstream
from cluster.gateway.stream.reasoning import exposure, strip_body
from cluster.gateway.responses.ids import ResponseIds, not_found


def owner(config: OwcConfig, endpoints: EndpointSource, ids: ResponseIds, tenant: str,
          response_id: str) -> Endpoint:
    """The live, non-draining replica holding ``response_id`` for ``tenant``; 404 otherwise."""
    found = None
    for model, m in config.models.items():
        if not m.responses_store.enabled:
            continue
        o = ids.verify(tenant, response_id, ttl_s=m.responses_store.ttl_s)
        if o is not None and o.model == model:
            found = o
            break
    if found is None or not allowed(config.gateway.tenants, tenant, found.model):
        raise not_found(response_id)
    for ep in endpoints.endpoints(found.model):
        if ep.replica_id == found.replica_id and not ep.draining:
            return ep
    raise not_found(response_id)


def add_responses_routes(table, *, config: OwcConfig, endpoints: EndpointSource, engine: EngineClient,
                         ids: ResponseIds) -> None:
    async def relay(request: Request, response_id: str, method: str, suffix: str) -> Response:
        tenant = request.state.tenant
        ep = owner(config, endpoints, ids, tenant, response_id)
        path = f"/v1/responses/{quote(response_id, safe='')}{suffix}"
        if method == "GET" and request.url.query:
            path += "?" + request.url.query
        host, port = engine.address(ep.url)
        try:
            resp = await engine.post(host, port, path, b"", {}, method=method)
            body = await resp.read()
        except EngineError:
            raise OpenAIError(502, "the engine replica holding this response did not answer; retry",
                              code="engine_connection_lost") from None
        resp.release()
        if resp.status >= 400:
            raise from_upstream(resp.status, body)
        if exposure(config, ep.model, tenant) == "strip":
            body = strip_body("/v1/responses", body)
        return Response(body, status_code=resp.status, media_type="application/json")

    @table.add("GET", "/v1/responses/{response_id}", "tenant")
    async def retrieve_response(request: Request, response_id: str) -> Response:
        if request.query_params.get("stream", "false").lower() in ("true", "1"):
            raise OpenAIError(400, "streamed retrieval (background responses) is not supported", param="stream",
                              code="unsupported_parameter")
        return await relay(request, response_id, "GET", "")

    @table.add("POST", "/v1/responses/{response_id}/cancel", "tenant")
    async def cancel_response(request: Request, response_id: str) -> Response:
        return await relay(request, response_id, "POST", "/cancel")
