"""The adapter admin API on two fake engines behind a gateway process: admin keys only
(tenant key 403, no key 401; no admin keys configured: 404), audited; add loads on every
replica (all or nothing), remove unloads everywhere; run-time additions are durable (a
restarted gateway still serves them, a replica started later gets them on demand); the
tenant allow-list applies; and the on-demand load is single-flight."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from cluster.gateway.upstream.adapter_loader import AdapterLoader
from cluster.adapters.store import AdapterStore
from cluster.config.loader import parse_config
from cluster.discovery.endpoints import Endpoint
from cluster.discovery.sources import StaticEndpoints
from cluster.gateway.errors import OpenAIError
from cluster.gateway.auth.keys import hash_key
from cluster.gateway.observability.metrics import GatewayMetrics
from tests.conftest import fake_engine_argv, gateway_argv, metric, server, wait_for

ENGINE_KEY = "engine-secret-for-adapter-tests"
ENV = {"OWC_ENGINE_KEY": ENGINE_KEY}
ADMIN, ALPHA, BETA = "Bearer sk-admin", "Bearer sk-alpha", "Bearer sk-beta"  # beta: no adapters
ADMIN_ROUTES = "/admin/v1/models/m1/adapters"


def chat(url: str, model: str, key: str = ALPHA) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers={"Authorization": key}, timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})


def engine_adapters(url: str) -> set[str]:
    r = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {ENGINE_KEY}"})
    return {c["id"] for c in r.json()["data"] if c.get("parent")}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapters")
    (d / "keys.yaml").write_text(yaml.safe_dump({hash_key("sk-alpha"): "alpha", hash_key("sk-beta"): "beta"}))
    (d / "admin.yaml").write_text(yaml.safe_dump({hash_key("sk-admin"): "ops"}))
    cfg = {"models": {"m1": {"source": "external", "adapters": {"decl": {"source": "/adapters/decl"}}}},
           "model_cache_dir": str(d),
           "gateway": {"api_keys_env": None, "admin_keys_env": None, "api_keys_file": str(d / "keys.yaml"),
                       "admin_keys_file": str(d / "admin.yaml"), "access_log": {"path": str(d / "access.log")},
                       "tenants": {"beta": {"models": ["m1"], "adapters": []}}}}
    (d / "owc.yaml").write_text(yaml.safe_dump(cfg))
    return d


@pytest.fixture(scope="module")
def stack(setup):
    with server(fake_engine_argv("m1"), env=ENV) as e1, server(fake_engine_argv("m1"), env=ENV) as e2, \
            server(gateway_argv(f"m1={e1.url}", f"m1={e2.url}", config=str(setup / "owc.yaml")), env=ENV) as gw:
        yield gw, (e1, e2)


def test_admin_routes_need_an_admin_key(stack):
    gw, _ = stack
    body = {"name": "x", "source": "/adapters/x"}
    assert httpx.post(gw.url + ADMIN_ROUTES, json=body).status_code == 401
    assert httpx.post(gw.url + ADMIN_ROUTES, json=body, headers={"Authorization": ALPHA}).status_code == 403
    assert httpx.get(gw.url + "/admin/v1/adapters", headers={"Authorization": ALPHA}).status_code == 403
    assert httpx.delete(gw.url + ADMIN_ROUTES + "/decl", headers={"Authorization": ALPHA}).status_code == 403


def test_add_serves_on_every_replica_then_remove_is_a_404(stack, setup):
    gw, engines = stack
    h = {"Authorization": ADMIN}
    r = httpx.post(gw.url + ADMIN_ROUTES, json={"name": "sup", "source": "/adapters/sup"}, headers=h, timeout=30)
    assert r.status_code == 200 and r.json()["added"] and len(r.json()["replicas"]) == 2
    assert all("sup" in engine_adapters(e.url) for e in engines)
    assert chat(gw.url, "sup").status_code == 200
    ids = {c["id"]: c.get("parent") for c in httpx.get(gw.url + "/v1/models", headers={"Authorization": ALPHA}).json()["data"]}
    assert ids["sup"] == "m1" and ids["decl"] == "m1"
    # a tenant whose allow-list excludes it: 403, and not listed
    assert chat(gw.url, "sup", BETA).status_code == 403
    beta = [c["id"] for c in httpx.get(gw.url + "/v1/models", headers={"Authorization": BETA}).json()["data"]]
    assert beta == ["m1"]
    listed = httpx.get(gw.url + ADMIN_ROUTES, headers=h).json()["adapters"]
    sup = next(a for a in listed if a["name"] == "sup")
    assert sup["origin"] == "runtime" and set(sup["replicas"].values()) == {"loaded"}
    assert json.loads((setup / "owc-adapters.json").read_text())["models"]["m1"]["sup"]["added_by"] == "ops"
    # taken names, declared adapters, bad bodies
    assert httpx.post(gw.url + ADMIN_ROUTES, json={"name": "m1", "source": "/a"}, headers=h).status_code == 409
    assert httpx.delete(gw.url + ADMIN_ROUTES + "/decl", headers=h).status_code == 409
    assert httpx.post(gw.url + ADMIN_ROUTES, json={"name": "x"}, headers=h).status_code == 400
    assert httpx.post(gw.url + "/admin/v1/models/nope/adapters", json={"name": "x", "source": "/a"},
                      headers=h).status_code == 404
    r = httpx.delete(gw.url + ADMIN_ROUTES + "/sup", headers=h, timeout=30)
    assert r.status_code == 200 and not any("sup" in engine_adapters(e.url) for e in engines)
    r = chat(gw.url, "sup")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert httpx.delete(gw.url + ADMIN_ROUTES + "/sup", headers=h).status_code == 404


def test_a_failed_load_is_undone_and_not_recorded(stack):
    gw, engines = stack
    failed = metric(gw.metrics_url, "owc_adapter_loads_total", model="m1", result="failed") or 0
    # the engines fail to load it (vLLM's 500): a 502, counted failed (alert OwcAdapterLoadsFailing)
    r = httpx.post(gw.url + ADMIN_ROUTES, json={"name": "broken", "source": "/broken/x"},
                   headers={"Authorization": ADMIN}, timeout=30)
    assert r.status_code == 502 and r.json()["error"]["code"] == "adapter_load_failed"
    assert [x["ok"] for x in r.json()["replicas"]] == [False, False]
    assert chat(gw.url, "broken").status_code == 404
    assert metric(gw.metrics_url, "owc_adapter_loads_total", model="m1", result="failed") == failed + 2


def test_an_adapter_the_engines_refuse_is_the_admins_400_and_no_alert(stack):
    # Review 10: a mistyped source (vLLM's 404 "No adapter found") was a 502 server_error and
    # counted failed, which fires OwcAdapterLoadsFailing while nothing served failed.
    gw, engines = stack
    failed = metric(gw.metrics_url, "owc_adapter_loads_total", model="m1", result="failed") or 0
    r = httpx.post(gw.url + ADMIN_ROUTES, json={"name": "typo", "source": "/fail/typo"},
                   headers={"Authorization": ADMIN}, timeout=30)
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "adapter_rejected" and err["param"] == "source", r.text
    assert "No adapter found for /fail/typo" in err["message"] and not r.json()["added"]
    assert chat(gw.url, "typo").status_code == 404 and not any("typo" in engine_adapters(e.url) for e in engines)
    assert metric(gw.metrics_url, "owc_adapter_loads_total", model="m1", result="rejected") >= 2
    assert (metric(gw.metrics_url, "owc_adapter_loads_total", model="m1", result="failed") or 0) == failed


def test_admin_calls_are_audited(stack, setup):
    gw, _ = stack
    httpx.post(gw.url + ADMIN_ROUTES, json={"name": "aud", "source": "/a"}, headers={"Authorization": ALPHA})
    httpx.post(gw.url + ADMIN_ROUTES, json={"name": "aud", "source": "/adapters/aud"}, headers={"Authorization": ADMIN})

    def lines():
        rows = [json.loads(x) for x in (setup / "access.log").read_text().splitlines() if x.strip()]
        return [x for x in rows if x.get("route") == ADMIN_ROUTES and x.get("method") == "POST"]

    rows = wait_for(lambda: [x for x in lines() if x.get("adapter") == "aud"] and lines(), 10, "audit lines")
    ok = next(x for x in rows if x.get("adapter") == "aud")
    assert ok["admin"] == "ops" and ok["status"] == 200 and ok["source"] == "/adapters/aud" and ok["action"] == "add"
    assert "ts" in ok and ok["replicas"] == 2 and ok["failed"] == 0
    assert any(x["admin"] is None and x["status"] == 403 for x in rows)  # the tenant key's attempt


def test_runtime_adapters_survive_a_gateway_restart_and_reach_a_later_replica(stack, setup):
    gw, engines = stack
    r = httpx.post(gw.url + ADMIN_ROUTES, json={"name": "keep", "source": "/adapters/keep"},
                   headers={"Authorization": ADMIN}, timeout=30)
    assert r.status_code == 200
    with server(fake_engine_argv("m1"), env=ENV) as late, \
            server(gateway_argv(f"m1={late.url}", config=str(setup / "owc.yaml")), env=ENV) as gw2:
        assert "keep" not in engine_adapters(late.url)
        assert chat(gw2.url, "keep").status_code == 200  # loaded on demand, first
        assert "keep" in engine_adapters(late.url)
        assert metric(gw2.metrics_url, "owc_adapter_loads_total", model="m1", result="ok") >= 1


def test_no_admin_keys_no_adapter_routes(setup):
    cfg = yaml.safe_load((setup / "owc.yaml").read_text())
    cfg["gateway"]["admin_keys_file"] = None
    (setup / "noadmin.yaml").write_text(yaml.safe_dump(cfg))
    with server(gateway_argv("m1=http://127.0.0.1:9", config=str(setup / "noadmin.yaml")), env=ENV) as gw:
        assert httpx.get(gw.url + "/admin/v1/adapters", headers={"Authorization": ADMIN}).status_code == 404
        assert httpx.post(gw.url + ADMIN_ROUTES, json={"name": "x", "source": "/a"}).status_code == 404
        # The CLI says why and what to do (before: "404 unknown route: POST /admin/v1/...").
        from typer.testing import CliRunner

        from cluster.cli import app

        for argv in (["adapter", "add", "m1", "x", "/a"], ["adapter", "list"], ["rollout", "status", "m1"]):
            r = CliRunner().invoke(app, [*argv, "--url", gw.url], env={"OWC_ADMIN_KEY": "sk-admin"})
            assert r.exit_code == 1 and f"{gw.url} has no admin API" in r.output, (argv, r.output)
            assert "gateway.admin_keys_file" in r.output and "owc keys create --admin" in r.output, r.output


def test_the_on_demand_load_is_single_flight(tmp_path):
    cfg = parse_config({"models": {"m": {"source": "x", "adapters": {"a": {"source": "/a"}, "bad": {"source": "/fail"}}}},
                        "model_cache_dir": str(tmp_path)})
    calls: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        calls.append(body["lora_name"])
        await asyncio.sleep(0.2)
        return httpx.Response(400 if "fail" in body["lora_path"] else 200, text="nope")

    async def run() -> None:
        eps = StaticEndpoints({"m": ["http://e1:1", "http://e2:1"]})
        loader = AdapterLoader(config=cfg, endpoints=eps, store=AdapterStore(cfg, tmp_path / "s.json"),
                               metrics=GatewayMetrics(CollectorRegistry(), replicas=lambda: []),
                               transport=httpx.MockTransport(handler))
        e1, e2 = eps.endpoints("m")
        assert isinstance(e1, Endpoint)
        await asyncio.gather(*(loader.ensure("m", e, "a") for e in (e1, e1, e1, e2, e2) * 4))
        assert sorted(calls) == ["a", "a"]  # one load per replica and adapter
        await loader.ensure("m", e1, "a")
        assert len(calls) == 2  # loaded: no call
        await loader.ensure("m", e1, "a", held=frozenset({"a"}))
        results = await asyncio.gather(*(loader.ensure("m", e1, "bad") for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, OpenAIError) and r.status == 502 for r in results) and calls.count("bad") == 1
        await loader.close()

    asyncio.run(run())


def test_the_cli_adds_lists_and_removes(stack):
    from typer.testing import CliRunner

    from cluster.cli import app

    gw, engines = stack
    run = CliRunner().invoke
    env = {"OWC_ADMIN_KEY": "sk-admin"}
    r = run(app, ["adapter", "add", "m1", "cli", "/adapters/cli", "--url", gw.url], env=env)
    assert r.exit_code == 0 and "loaded on 2 replica(s)" in r.output, r.output
    r = run(app, ["adapter", "list", "m1", "--url", gw.url], env=env)
    row = next(line.split() for line in r.output.splitlines() if " cli " in line)
    assert r.exit_code == 0 and row[:4] == ["m1", "cli", "runtime", "/adapters/cli"] and "loaded" in row[-1], r.output
    r = run(app, ["adapter", "add", "m1", "nope", "/fail/x", "--url", gw.url], env=env)
    assert r.exit_code == 1 and "400" in r.output and "engine answered 404" in r.output, r.output
    r = run(app, ["adapter", "remove", "m1", "cli", "--url", gw.url], env=env)
    assert r.exit_code == 0 and not any("cli" in engine_adapters(e.url) for e in engines)
    assert run(app, ["adapter", "list", "--url", gw.url], env={"OWC_ADMIN_KEY": ""}).exit_code == 2


def test_a_starting_replica_loads_the_recorded_adapters(setup):
    from cluster.adapters.store import load_recorded

    with server(fake_engine_argv("m1"), env=ENV) as e:
        (setup / "rec").mkdir(exist_ok=True)
        (setup / "rec" / "owc-adapters.json").write_text(json.dumps(
            {"models": {"m1": {"r1": {"source": "/adapters/r1"}, "bad": {"source": "/fail/x"}}, "m2": {"r2": {"source": "/y"}}}}))
        problems = asyncio.run(load_recorded(e.url, "m1", str(setup / "rec"), ENGINE_KEY))
        assert engine_adapters(e.url) == {"r1"} and len(problems) == 1 and problems[0].startswith("bad: 404")


def test_adding_a_served_name_from_another_source_is_refused(stack, setup):
    # Review 10: the engines answered "already loaded" and kept the first weights, while the
    # store and `owc adapter list` took the new source (a replica started later would load it).
    gw, engines = stack
    h = {"Authorization": ADMIN}

    def add(source: str) -> httpx.Response:
        return httpx.post(gw.url + ADMIN_ROUTES, json={"name": "ver", "source": source}, headers=h, timeout=30)

    assert add("/adapters/ver-1").status_code == 200
    assert add("/adapters/ver-1").status_code == 200  # the same source again: nothing changes
    r = add("/adapters/ver-2")
    assert r.status_code == 409 and r.json()["error"]["code"] == "adapter_exists", r.text
    assert json.loads((setup / "owc-adapters.json").read_text())["models"]["m1"]["ver"]["source"] == "/adapters/ver-1"
    listed = httpx.get(gw.url + ADMIN_ROUTES, headers=h).json()["adapters"]
    assert next(a for a in listed if a["name"] == "ver")["source"] == "/adapters/ver-1"
    assert httpx.delete(gw.url + ADMIN_ROUTES + "/ver", headers=h, timeout=30).status_code == 200
    assert add("/adapters/ver-2").status_code == 200  # removed first: the new version is served
    assert httpx.delete(gw.url + ADMIN_ROUTES + "/ver", headers=h, timeout=30).status_code == 200


@pytest.mark.parametrize("status, body, rejected", [
    (404, '{"error":{"message":"Loading lora x failed: No adapter found for /p","type":"NotFoundError","code":404}}', True),
    (400, '{"error":{"message":"bad adapter","type":"BadRequestError","code":400}}', True),
    (404, '{"detail":"Not Found"}', False),  # no such route: the engine was started without runtime LoRA loading
    (401, '{"error":{"message":"Unauthorized","type":"AuthenticationError","code":401}}', False),  # the engine key
    (429, '{"error":{"message":"busy","type":"RateLimitError","code":429}}', False),
    (500, '{"error":{"message":"cannot read the weights","type":"InternalServerError","code":500}}', False),
])
def test_only_the_engines_refusal_of_the_adapter_is_counted_rejected(tmp_path, status, body, rejected):
    cfg = parse_config({"models": {"m": {"source": "x"}}, "model_cache_dir": str(tmp_path)})
    registry = CollectorRegistry()

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=body)

    async def run() -> list:
        loader = AdapterLoader(config=cfg, endpoints=StaticEndpoints({"m": ["http://e1:1"]}),
                               store=AdapterStore(cfg, tmp_path / "s.json"),
                               metrics=GatewayMetrics(registry, replicas=lambda: []), transport=httpx.MockTransport(handler))
        ok, results = await loader.add("m", "x", "/p", "ops")
        await loader.close()
        assert not ok
        return results

    results = asyncio.run(run())
    assert [r.rejected for r in results] == [rejected]
    outcome = "rejected" if rejected else "failed"
    assert registry.get_sample_value("owc_adapter_loads_total", {"model": "m", "result": outcome}) == 1
