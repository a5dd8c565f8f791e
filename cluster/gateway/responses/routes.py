"""`GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel`, sent to the engine replica
that holds the response (its id names it: cluster.gateway.responses.ids), whichever engine
that is: one owc started, or one behind `owc gateway --upstream` whose own store answers. An
id the gateway cannot verify for the caller's tenant, or whose replica is gone or draining,
answers vLLM's 404; so does the owner when it does not hold it, with the setting that would
change that (cluster.gateway.responses.missing). vLLM 0.32 has no DELETE for responses, so
neither has owc. Tenant access, in the route table (the auth matrix covers both)."""

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
from cluster.gateway.responses import missing
from cluster.gateway.responses.conversations import locate
from cluster.gateway.responses.ids import ResponseIds


def owner(config: OwcConfig, endpoints: EndpointSource, ids: ResponseIds, tenant: str,
          response_id: str) -> Endpoint:
    """The live, non-draining replica holding ``response_id`` for ``tenant``; 404 otherwise."""
    found = locate(config, ids, tenant, response_id)
    if not allowed(config.gateway.tenants, tenant, found.model):
        raise missing.unknown(response_id, random_key=ids.random_key)
    for ep in endpoints.endpoints(found.model):
        if ep.replica_id == found.replica_id and not ep.draining:
            return ep
    raise missing.owner_gone(response_id)


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
            err = from_upstream(resp.status, body)
            if missing.is_vllms(err, response_id):
                store = config.models[ep.model].responses_store
                raise missing.engine_missing(response_id, ep.model, store_enabled=store.enabled)
            raise err
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
