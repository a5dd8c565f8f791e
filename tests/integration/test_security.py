"""The engines answer only the gateway, on real vLLM: sent straight to an engine port
without the engine credential, `POST /invocations`, `/tokenize`, `/v1/completions` and
`GET /v1/models` get 401 (vLLM's own --api-key would have let the first two through); the
gateway's own calls keep working; the credential is in the engine's environment, never
its command line."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cluster.gateway.upstream.stats_poller import FILTERED_METRICS
from cluster.routing.stats import parse_vllm_metrics
from tests.integration.conftest import engine_urls

MODEL = "tiny-llama-tp2"  # not scaled by the capacity test: one replica, stable URL
CALLS = [
    ("POST", "/invocations", {"prompt": "x", "max_tokens": 2}),
    ("POST", "/tokenize", {"model": MODEL, "prompt": "x"}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2}),
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}),
    ("GET", "/v1/models", None),
]


@pytest.mark.parametrize("method, path, body", CALLS, ids=[c[1] for c in CALLS])
def test_an_engine_refuses_callers_without_the_engine_key(cluster, method, path, body):
    (url,) = engine_urls(MODEL)
    for auth in (None, "Bearer wrong", "Bearer sk-itest"):  # none, a wrong one, a gateway API key
        r = httpx.request(method, url + path, json=body, headers={"Authorization": auth} if auth else {}, timeout=30)
        assert r.status_code == 401, (path, auth, r.text)
        assert r.json()["error"]["code"] == "invalid_engine_key"


def test_the_engine_key_opens_it_and_the_gateway_keeps_working(cluster, client):
    (url,) = engine_urls(MODEL)
    headers = {"Authorization": f"Bearer {cluster.engine_key}"}
    assert httpx.post(url + "/tokenize", json={"model": MODEL, "prompt": "x"}, headers=headers, timeout=30).status_code == 200
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    assert "vllm:num_requests_running" in httpx.get(url + "/metrics", timeout=10).text  # the scraper's view
    out = client.completions.create(model=MODEL, prompt="x", max_tokens=3)
    assert out.usage.completion_tokens >= 1


def test_the_scrapers_filtered_read_is_open_and_holds_routings_gauges_only(cluster):
    """The gateways' stats read (FILTERED_METRICS) on a real guarded vLLM: open like /metrics,
    only the families routing reads (not vLLM's histograms), and parsed as a whole read is."""
    (url,) = engine_urls(MODEL)
    whole, filtered = httpx.get(url + "/metrics", timeout=10), httpx.get(url + FILTERED_METRICS, timeout=10)
    assert filtered.status_code == 200 and "vllm:num_requests_running" in filtered.text
    assert "_bucket" in whole.text and "_bucket" not in filtered.text and len(filtered.content) < len(whole.content) / 10
    assert parse_vllm_metrics(filtered.content).running >= 0  # raises without the scheduler gauges


def test_the_engine_key_is_in_the_environment_never_argv(cluster):
    from ray import serve

    pid = serve.get_deployment_handle("engine-tiny-llama-tp2", app_name="owc").info.remote().result()["pid"]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    env = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
    key = cluster.engine_key.encode()
    assert env[b"OWC_ENGINE_KEY"] == key and not any(key in a for a in argv)
    assert b"cluster.engine.guard.EngineGuard" in argv
