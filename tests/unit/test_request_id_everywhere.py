"""Every answer of the gateway carries ``x-request-id``, as every answer of OpenAI's API does:
its SDK reads the header for ``_request_id`` on files, batches and models, and for
``APIStatusError.request_id`` on their errors (a 404, a 405). The generation routes had it;
the FastAPI routes (models, files, batches, stored responses, unknown routes) did not."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client import CollectorRegistry

from cluster.config.loader import parse_config
from cluster.discovery.sources import StaticEndpoints
from cluster.gateway.app import build_app
from cluster.gateway.auth.authenticator import Authenticator, KeyStore


def _get(method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    cfg = parse_config({"models": {"m": {"source": "external"}}})
    app = build_app(config=cfg, endpoints=StaticEndpoints({}), auth=Authenticator(keys=KeyStore({})),
                    registry=CollectorRegistry(), poll_stats=False)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
            return await c.request(method, path, headers=headers)

    return asyncio.run(go())


def test_models_and_errors_of_fastapi_routes_carry_x_request_id():
    ok = _get("GET", "/v1/models")
    assert ok.status_code == 200 and ok.headers.get("x-request-id")
    for method, path in (("GET", "/v1/models/nope"), ("GET", "/v1/nowhere"), ("GET", "/v1/chat/completions")):
        r = _get(method, path)
        assert r.status_code in (404, 405) and r.headers.get("x-request-id"), (method, path, r.headers)
    assert _get("GET", "/v1/models").headers["x-request-id"] != ok.headers["x-request-id"]


def test_a_plain_client_request_id_is_echoed_and_a_bad_one_replaced():
    assert _get("GET", "/v1/models", {"x-request-id": "trace-42"}).headers["x-request-id"] == "trace-42"
    assert _get("GET", "/v1/models", {"x-request-id": "has space"}).headers["x-request-id"] != "has space"
