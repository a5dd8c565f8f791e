"""Every route of the gateway, taken from its own route table, under every kind of
credential: no key, a malformed header, an unknown key, another tenant's key on a model
outside its allow-list, an admin key on tenant routes, a tenant key on admin routes, and
the valid credential. The engines behind it are guarded (they answer only the engine key),
and a counter on each engine shows that no request without a valid credential reaches one.
A route added later is in the table, so it is in this matrix the day it appears."""

from __future__ import annotations

import httpx
import pytest
import yaml
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry

from cluster.config.loader import parse_config
from cluster.discovery.sources import StaticEndpoints
from cluster.gateway.app import build_app
from cluster.gateway.auth.authenticator import Authenticator
from cluster.gateway.auth.keys import hash_key
from cluster.discovery.rollouts import RolloutFiles
from cluster.rollouts.analysis import LocalAnalysis, http_scrape
from tests.conftest import fake_engine_argv, gateway_argv, metric, server
from tests.unit.rollout_helpers import Ticker

ENGINE_KEY = "engine-secret-for-tests"
KEYS = {"sk-alpha": "alpha", "sk-beta": "beta"}  # beta may use only m2
ADMIN = {"sk-admin": "ops"}
CONFIG = {
    # m1 has a candidate: its rollout's admin routes are served (docs/rollouts.md)
    "models": {"m1": {"source": "external", "candidate": {"engine_kwargs": {"max_num_seqs": 8}}}, "m2": {"source": "external"}},
    "gateway": {"api_keys_env": None, "admin_keys_env": None, "tenants": {"beta": {"models": ["m2"]}},
                # The matrix is many failed authentications from one address: not throttled here
                # (the failed-auth throttle is tests/unit/test_hostile_clients.py's).
                "limits": {"auth_failures_burst": 1000}},
}

CREDENTIALS = {
    "none": None,
    "malformed": "Basic c2stYWxwaGE6",
    "unknown": "Bearer sk-nobody",
    "other_tenant": "Bearer sk-beta",  # a valid key whose allow-list lacks m1
    "admin": "Bearer sk-admin",
    "tenant": "Bearer sk-alpha",
}
# access class -> credential -> expected status (the valid credential of each class: 200)
EXPECTED = {
    "public": dict.fromkeys(CREDENTIALS, 200),
    "tenant": {"none": 401, "malformed": 401, "unknown": 401, "other_tenant": 403, "admin": 403, "tenant": 200},
    "admin": {"none": 401, "malformed": 401, "unknown": 401, "other_tenant": 403, "admin": 200, "tenant": 403},
}
# Routes that answer a tenant outside its allow-list as if the model did not exist.
NOT_FOUND_OUTSIDE_LIST = {"/v1/models/{model:path}"}
# Routes of a stored response: an id the gateway did not mint for the caller answers 404 (vLLM's
# shape) for any valid tenant, before any engine is reached.
UNKNOWN_ID = {"/v1/responses/{response_id}", "/v1/responses/{response_id}/cancel"}
# The Batch API's files and batches are not model-scoped: every valid tenant has them (beta too),
# and an id the caller does not own answers 404.
BATCH_ROUTES = {"/v1/files", "/v1/batches"}
UNKNOWN_ID |= {"/v1/files/{file_id}", "/v1/files/{file_id}/content", "/v1/batches/{batch_id}",
               "/v1/batches/{batch_id}/cancel"}
BATCH_LINE = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m1"}}\n'
# Anthropic's Messages API answers errors in Anthropic's shape (cluster.gateway.anthropic).
ANTHROPIC = {"/v1/messages", "/v1/messages/count_tokens"}
BODIES = {
    "/v1/chat/completions": {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    "/v1/completions": {"model": "m1", "prompt": "hi", "max_tokens": 2},
    "/v1/responses": {"model": "m1", "input": "hi", "max_output_tokens": 2},
    "/v1/messages": {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    "/v1/messages/count_tokens": {"model": "m1", "messages": [{"role": "user", "content": "hi"}]},
    "/admin/v1/models/{model:path}/adapters": {"name": "ad1", "source": "/adapters/ad1"},  # then DELETEd
}


def _table(cfg):
    app = build_app(config=cfg, endpoints=StaticEndpoints({}), auth=Authenticator.from_config(cfg.gateway, environ={}),
                    registry=CollectorRegistry(), poll_stats=False)
    return app


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("auth")
    (d / "keys.yaml").write_text(yaml.safe_dump({hash_key(k): t for k, t in KEYS.items()}))
    (d / "admin.yaml").write_text(yaml.safe_dump({hash_key(k): n for k, n in ADMIN.items()}))
    cfg = {**CONFIG, "gateway": {**CONFIG["gateway"], "api_keys_file": str(d / "keys.yaml"),
                                 "admin_keys_file": str(d / "admin.yaml")}, "model_cache_dir": str(d),
           "batch": {"store_dir": str(d / "batch")}}
    (d / "owc.yaml").write_text(yaml.safe_dump(cfg))
    env = {"OWC_ENGINE_KEY": ENGINE_KEY, "OWC_ROLLOUT_DIR": str(d / "rollouts")}
    analysis = LocalAnalysis(parse_config(cfg), RolloutFiles(d / "rollouts"), scrape=http_scrape)  # answers rollout commands
    with server(fake_engine_argv("m1"), env=env) as e1, server(fake_engine_argv("m2"), env=env) as e2, \
            server(gateway_argv(f"m1={e1.url}", f"m2={e2.url}", config=str(d / "owc.yaml")), env=env) as gw, \
            Ticker(analysis):
        yield gw, (e1, e2), parse_config(cfg)


def test_every_fastapi_route_is_in_the_route_table(stack):
    _, _, cfg = stack
    app = _table(cfg)
    declared = {(r.method, r.path) for r in app.route_table()}
    served = {(m, r.path) for r in app.api.routes if isinstance(r, APIRoute) for m in r.methods}
    assert served <= declared and served, served - declared
    assert {r.access for r in app.route_table()} == {"public", "tenant", "admin"}


def _call(http: httpx.Client, url: str, method: str, path: str, authorization: str | None) -> httpx.Response:
    """One request of the matrix, on the matrix's client (kept-alive connections; no cookie carried
    from one cell to the next)."""
    http.cookies.clear()
    headers = {"Authorization": authorization} if authorization else {}
    real = path.replace("{model:path}", "m1").replace("{name:path}", "ad1").replace("{response_id}", "resp_not_minted_here")
    real = real.replace("{file_id}", "file-not-minted-here").replace("{batch_id}", "batch_not_minted_here")
    real = real.replace("{action}", "abort")  # a rollout command (the rollout is still running when the admin sends it)
    if method == "POST" and path == "/v1/files":
        return http.post(url + real, files={"file": ("in.jsonl", BATCH_LINE)}, data={"purpose": "batch"},
                         headers=headers, timeout=30)
    if method == "POST" and path == "/v1/batches":  # an input file of the caller's own first (if it may upload)
        up = _call(http, url, "POST", "/v1/files", authorization)
        body = {"input_file_id": up.json().get("id", "file-none") if up.status_code == 200 else "file-none",
                "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        return http.post(url + real, json=body, headers=headers, timeout=30)
    if method == "POST":
        return http.post(url + real, json=BODIES.get(path, {}), headers=headers, timeout=30)
    return http.request(method, url + real, headers=headers, timeout=30)


def _reached(engines, http: httpx.Client) -> float:
    return sum(metric(e.url, "owc_fake_generation_requests_total", client=http) for e in engines)


def test_auth_matrix(stack):
    gw, engines, cfg = stack
    routes = _table(cfg).route_table()
    with httpx.Client() as http:  # one client for every cell's request and engine scrapes, not one per call
        cells, leaks = _matrix(gw, engines, routes, http)
    wrong = [c for c in cells if c[3] != c[4]]
    assert wrong == [], wrong
    assert leaks == []
    assert len(cells) == len(routes) * len(CREDENTIALS) >= 7 * 6
    # The gateway's own calls carried the engine key: the engines refused nothing.
    assert sum(metric(e.url, "owc_fake_denied_requests_total") for e in engines) == 0


def _matrix(gw, engines, routes, http: httpx.Client) -> tuple[list, list]:
    """Every route under every credential: the cells (method, path, credential, status,
    expected) and the leaks (requests that reached an engine without a valid credential);
    the error bodies' shapes asserted as they come."""
    cells, leaks = [], []
    for route in routes:
        for cred, header in CREDENTIALS.items():
            before = _reached(engines, http)
            r = _call(http, gw.url, route.method, route.path, header)
            expected = EXPECTED[route.access][cred]
            if cred == "other_tenant" and route.path in NOT_FOUND_OUTSIDE_LIST:
                expected = 404
            if route.path in UNKNOWN_ID and cred in ("tenant", "other_tenant"):
                expected = 404
            if route.path in BATCH_ROUTES and cred == "other_tenant":
                expected = 200
            if route.path == "/v1/models" and cred == "other_tenant":
                expected = 200  # listed, without m1 (below)
            cells.append((route.method, route.path, cred, r.status_code, expected))
            reached = _reached(engines, http) - before
            valid = expected == 200 and route.access == "tenant" and route.method == "POST"
            if reached and not valid:
                leaks.append((route.path, cred, reached))
            if r.status_code >= 400 and route.path in ANTHROPIC:
                body = r.json()
                assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
            elif r.status_code >= 400:
                body = r.json()
                assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return cells, leaks


def test_a_tenant_sees_only_its_models(stack):
    gw, _, _ = stack
    ids = lambda key: [m["id"] for m in httpx.get(gw.url + "/v1/models", headers={"Authorization": key}).json()["data"]]  # noqa: E731
    assert ids("Bearer sk-alpha") == ["m1", "m2"]
    assert ids("Bearer sk-beta") == ["m2"]
    r = httpx.post(gw.url + "/v1/chat/completions", json={**BODIES["/v1/chat/completions"], "model": "m2"},
                   headers={"Authorization": "Bearer sk-beta"})
    assert r.status_code == 200
    r = httpx.post(gw.url + "/v1/chat/completions", json=BODIES["/v1/chat/completions"],
                   headers={"Authorization": "Bearer sk-beta"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"


def test_metrics_are_off_the_api_port(stack):
    gw, _, _ = stack
    assert httpx.get(gw.url + "/metrics").status_code == 404
    assert httpx.get(gw.url + "/metrics", headers={"Authorization": "Bearer sk-admin"}).status_code == 404
    text = httpx.get(gw.metrics_url + "/metrics").text
    assert "owc_requests_total" in text
    # the metrics port is metrics only: no API door
    assert httpx.post(gw.metrics_url + "/v1/completions", json=BODIES["/v1/completions"]).status_code == 404


def test_admin_route_lists_replicas_with_stats_read_through_the_engine_key(stack):
    gw, engines, _ = stack
    r = httpx.get(gw.url + "/admin/v1/replicas", headers={"Authorization": "Bearer sk-admin"})
    assert r.status_code == 200
    rows = r.json()["models"]
    assert [x["url"] for x in rows["m1"]] == [engines[0].url] and [x["url"] for x in rows["m2"]] == [engines[1].url]


def test_a_gateway_without_the_engine_key_answers_502_not_the_tenants_401(stack, tmp_path):
    _, engines, _ = stack
    with server(gateway_argv(f"m1={engines[0].url}")) as keyless:
        r = httpx.post(keyless.url + "/v1/completions", json=BODIES["/v1/completions"], timeout=30)
    assert r.status_code == 502 and r.json()["error"]["code"] == "engine_auth_failed"


def test_engines_refuse_callers_without_the_engine_key(stack):
    _, engines, _ = stack
    e = engines[0]
    assert httpx.post(e.url + "/v1/completions", json={**BODIES["/v1/completions"]}).status_code == 401
    assert httpx.get(e.url + "/v1/models").status_code == 401
    assert httpx.get(e.url + "/v1/models", headers={"Authorization": f"Bearer {ENGINE_KEY}"}).status_code == 200
    assert httpx.get(e.url + "/health").status_code == 200 and httpx.get(e.url + "/metrics").status_code == 200
