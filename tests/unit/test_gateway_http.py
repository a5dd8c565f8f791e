"""The gateway process over real HTTP in front of the fake engine (no Ray, no vLLM): the
OpenAI client works unchanged, and every bad input gets an OpenAI-shaped error with the
right status. The same behaviour against real vLLM is in tests/integration."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
import yaml

from tests.conftest import fake_engine_argv, gateway_argv, server, wait_for


@pytest.fixture(scope="module")
def engine():
    with server(fake_engine_argv("fake-model", itl_ms=2)) as e:
        yield e


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "owc.yaml"
    path.write_text(yaml.safe_dump({
        "models": {
            "fake-model": {"source": "external", "aliases": ["fm"], "max_model_len": 512},
            "dark-model": {"source": "external"},
        },
        "gateway": {"limits": {"max_body_bytes": 4096}, "api_keys_env": None},
    }, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def gateway(engine, config_file):
    # dark-model points at a closed port: configured, but no replica reachable.
    with server(gateway_argv(f"fake-model={engine.url}", "dark-model=http://127.0.0.1:9", config=config_file)) as g:
        yield g


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def _err(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    return body["error"]


def test_health_and_ready(gateway):
    assert httpx.get(gateway.url + "/health").json() == {"status": "ok"}
    # dark-model's one replica cannot be reached: the gateway is not ready for it (its stats
    # scrape fails within one poll), while fake-model has its healthy replica
    r = wait_for(lambda: (x := httpx.get(gateway.url + "/ready")).json()["models"]["dark-model"]["replicas"] == 0 and x,
                 5, "the unreachable replica out of routing")
    assert r.status_code == 503 and r.json()["models"]["fake-model"]["replicas"] == 1
    # the process that answered, the same on each call (`owc serve` waits for every one: cluster.readiness)
    assert r.json()["process"] and httpx.get(gateway.url + "/ready").json()["process"] == r.json()["process"]


def test_models_list_and_alias_lookup(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["fake-model", "dark-model"]
    assert client.models.retrieve("fm").id == "fake-model"


def test_chat_and_completions_stream_and_not(client):
    chat = client.chat.completions.create(model="fm", messages=[{"role": "user", "content": "Bonjour"}], max_tokens=5)
    assert chat.model == "fake-model" and chat.usage.completion_tokens == 5
    comp = client.completions.create(model="fake-model", prompt="hello", max_tokens=3)
    assert comp.choices[0].text == "tok0 tok1 tok2"
    chunks = list(client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True,
        stream_options={"include_usage": True},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f" tok{i}" for i in range(6))
    assert chunks[-1].usage.completion_tokens == 6
    stream = list(client.completions.create(model="fake-model", prompt="x", max_tokens=4, stream=True))
    assert len(stream) == 4


def test_request_id_generated_and_propagated(gateway):
    body = {"model": "fake-model", "prompt": "x", "max_tokens": 1}
    r = httpx.post(gateway.url + "/v1/completions", json=body, headers={"x-request-id": "req-42"})
    assert r.headers["x-request-id"] == "req-42"
    assert r.json()["id"] == "cmpl-req-42"  # the engine saw it
    r = httpx.post(gateway.url + "/v1/completions", json=body)
    assert len(r.headers["x-request-id"]) == 32 and r.json()["id"] == "cmpl-" + r.headers["x-request-id"]
    assert "server" not in r.headers  # what the gateway runs on is not advertised (uvicorn's default is)


def test_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"
    assert "GET /v1/models lists the models" in e.value.message  # where to find the right name
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("nope")
    assert "GET /v1/models lists the models" in e.value.message


CHAT = "/v1/chat/completions"


@pytest.mark.parametrize(
    "content, headers, status, code, param",
    [
        (b"{not json", {"content-type": "application/json"}, 400, "invalid_json", None),
        (b"[1, 2]", {"content-type": "application/json"}, 400, "invalid_json", None),
        (b'{"model": "fake-model"}', {"content-type": "application/json"}, 400, "missing_required_parameter", "messages"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', {"content-type": "application/json"}, 400, "missing_required_parameter", "model"),
        (b'{"model": "fake-model", "messages": []}', {"content-type": "application/json"}, 400, "invalid_value", "messages"),
        (b'{"model": "fake-model", "messages": [{"role": "wizard", "content": "x"}]}', {"content-type": "application/json"}, 400, "invalid_value", "messages.0.role"),
        (b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}', {"content-type": "application/json"}, 400, "invalid_value", "max_tokens"),
        (b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', {"content-type": "application/json"}, 400, "invalid_value", "max_tokens"),
        (b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', {"content-type": "application/json"}, 400, "invalid_value", "temperature"),
        (b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', {"content-type": "application/json"}, 400, "invalid_value", "stream"),
        (b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "frobnicate": 1}', {"content-type": "application/json"}, 400, "unsupported_parameter", "frobnicate"),
        (b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "audio": {"voice": "x"}}', {"content-type": "application/json"}, 400, "unsupported_parameter", "audio"),
        # a structured output's malformed JSON Schema: the gateway's 400, not the engine's grammar error
        (b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "nonsense"}}}}', {"content-type": "application/json"}, 400, "invalid_json_schema", "response_format.json_schema.schema"),
        (b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}]}', {"content-type": "text/plain"}, 415, "unsupported_media_type", None),
        (b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}]}', {}, 415, "unsupported_media_type", None),
        (b'{"model": "fake-model", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}', {"content-type": "application/json"}, 413, "request_too_large", None),
    ],
)
def test_bad_input_gets_openai_error(gateway, content, headers, status, code, param):
    r = httpx.post(gateway.url + CHAT, content=content, headers=headers)
    assert r.status_code == status, r.text
    err = _err(r)
    assert err["code"] == code and err["param"] == param


def test_routes_and_methods_are_openai_errors(gateway):
    r = httpx.get(gateway.url + "/v1/nothing")
    assert r.status_code == 404 and _err(r)["type"] == "not_found_error"
    r = httpx.get(gateway.url + CHAT)
    assert r.status_code == 405 and _err(r)


def test_oversize_body_refused_before_it_is_read(gateway):
    """A declared 100 MB body is refused at once, without waiting for the bytes."""
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n".encode())
        s.sendall(b'{"model": ')
        t0 = time.monotonic()
        head = s.recv(4096).decode()
        assert head.startswith("HTTP/1.1 413"), head
        assert time.monotonic() - t0 < 3


def test_chunked_oversize_body_is_413(gateway):
    def gen():
        for _ in range(10):
            yield b" " * 1000

    r = httpx.post(gateway.url + CHAT, content=gen(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and _err(r)["code"] == "request_too_large"


def test_model_without_reachable_replica_is_503(client):
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="dark-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 503 and e.value.code == "no_healthy_replica"
    assert e.value.response.headers["retry-after"] == "1"


def _metric(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_disconnect_aborts_the_engine_request(gateway, engine):
    aborted = _metric(engine.url, "owc_fake_aborted_requests_total")
    body = {"model": "fake-model", "prompt": "x", "max_tokens": 5000, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/completions", json=body) as r:
        for i, _ in enumerate(r.iter_raw()):
            if i >= 3:
                break
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _metric(engine.url, "vllm:num_requests_running") > 0:
        time.sleep(0.05)
    assert _metric(engine.url, "vllm:num_requests_running") == 0
    assert _metric(engine.url, "owc_fake_aborted_requests_total") == aborted + 1


def test_disconnect_aborts_non_streamed_request(gateway, engine):
    aborted = _metric(engine.url, "owc_fake_aborted_requests_total")
    body = {"model": "fake-model", "prompt": "x", "max_tokens": 5000}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.url + "/v1/completions", json=body, timeout=0.5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _metric(engine.url, "owc_fake_aborted_requests_total") == aborted:
        time.sleep(0.05)
    assert _metric(engine.url, "owc_fake_aborted_requests_total") == aborted + 1
    assert _metric(engine.url, "vllm:num_requests_running") == 0


def test_gateway_metrics_count_requests(gateway, client):
    before = _metric(gateway.metrics_url, 'owc_requests_total{code="200",model="fake-model"')
    client.completions.create(model="fake-model", prompt="x", max_tokens=1)
    text = httpx.get(gateway.metrics_url + "/metrics").text
    assert "owc_requests_total" in text and "owc_requests_in_flight" in text
    line = next(line for line in text.splitlines() if line.startswith("owc_requests_total") and 'code="200"' in line and 'route="/v1/completions"' in line)
    assert 'tenant="anonymous"' in line and float(line.rsplit(" ", 1)[1]) >= 1
    assert before >= 0


class TestApiKeys:
    @pytest.fixture(scope="class")
    def keyed(self, engine, tmp_path_factory):
        keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
        keys.write_text(yaml.safe_dump({"sk-file": "acme"}))
        cfg = tmp_path_factory.mktemp("kcfg") / "owc.yaml"
        cfg.write_text(yaml.safe_dump({
            "models": {"fake-model": {"source": "external"}},
            "gateway": {"api_keys_file": str(keys), "api_keys_env": "TEST_OWC_KEYS"},
        }))
        with server(gateway_argv(f"fake-model={engine.url}", config=str(cfg)), env={"TEST_OWC_KEYS": "sk-env=beta"}) as g:
            yield g

    @pytest.mark.parametrize("auth, status", [(None, 401), ("Bearer wrong", 401), ("Basic sk-file", 401), ("Bearer sk-file", 200), ("Bearer sk-env", 200)])
    def test_keys_required_on_api_routes(self, keyed, auth, status):
        headers = {"Authorization": auth} if auth else {}
        r = httpx.get(keyed.url + "/v1/models", headers=headers)
        assert r.status_code == status
        if status == 401:
            assert _err(r)["type"] == "authentication_error"
        r = httpx.post(keyed.url + "/v1/completions", json={"model": "fake-model", "prompt": "x", "max_tokens": 1}, headers=headers)
        assert r.status_code == status

    def test_health_and_ready_need_no_key(self, keyed):
        assert httpx.get(keyed.url + "/health").status_code == 200
        assert httpx.get(keyed.url + "/ready").status_code == 200

    def test_tenant_comes_from_the_key(self, keyed):
        httpx.post(keyed.url + "/v1/completions", json={"model": "fake-model", "prompt": "x", "max_tokens": 1}, headers={"Authorization": "Bearer sk-env"})
        assert 'tenant="beta"' in httpx.get(keyed.metrics_url + "/metrics").text


def test_non_loopback_bind_without_keys_is_refused():
    p = subprocess.run(
        [sys.executable, "-m", "cluster.gateway.main", "--upstream", "m=http://127.0.0.1:9", "--host", "0.0.0.0", "--port", "18999"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )
    assert p.returncode == 2 and "refusing to bind 0.0.0.0:18999" in p.stderr


def test_engine_connections_are_kept_alive(gateway, engine, client):
    import psutil

    for _ in range(20):
        client.completions.create(model="fake-model", prompt="x", max_tokens=2)
        list(client.completions.create(model="fake-model", prompt="x", max_tokens=2, stream=True))
    conns = [c for c in psutil.Process(engine.pid).net_connections() if c.status == psutil.CONN_ESTABLISHED]
    assert 1 <= len(conns) <= 2, conns


async def test_unexpected_proxy_failure_is_an_openai_500():
    """A bug inside the gateway still answers in the OpenAI shape (never a bare 500 page)."""
    import httpx as hx
    from prometheus_client import CollectorRegistry

    from cluster.config.loader import parse_config
    from cluster.gateway.app import build_app
    from cluster.gateway.auth.authenticator import Authenticator, KeyStore

    class Broken:
        def endpoints(self, model):
            raise RuntimeError("boom")

        async def start(self):
            return None

        async def stop(self):
            return None

    app = build_app(config=parse_config({"models": {"m": {"source": "x"}}}), endpoints=Broken(), auth=Authenticator(keys=KeyStore({})),
                    registry=CollectorRegistry())
    async with hx.AsyncClient(transport=hx.ASGITransport(app=app), base_url="http://gw") as c:
        r = await c.post("/v1/completions", json={"model": "m", "prompt": "x"})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert r.headers["x-request-id"]
