"""The Messages API through a real gateway process (fake engines behind it): the admission the
OpenAI routes have, answered in Anthropic's shape — a tenant over its request limit (429
rate_limit_error with Retry-After), a model outside the tenant's allow-list (403
permission_error), the wrong content type (415) and a body over the limit (413
request_too_large); a replica that refuses connections fails no request; an engine that
dies mid-stream ends the stream with Anthropic's `event: error`; the route's metrics."""

from __future__ import annotations

from datetime import datetime, timezone

import httpx
import orjson
import pytest
import yaml

from tests.conftest import fake_engine_argv, gateway_argv, metric, server
from cluster.process import free_port

KEYS = {"sk-a": "alpha", "sk-limited": "limited", "sk-b": "beta"}
ASK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("anthropic")
    cfg = d / "owc.yaml"
    cfg.write_text(yaml.safe_dump({
        "models": {"m": {"source": "external"}, "dying": {"source": "external"}},
        "gateway": {"api_keys_env": "ANTH_TEST_KEYS", "access_log": {"enabled": False},
                    "limits": {"max_body_bytes": 4096},
                    "tenants": {"limited": {"requests_per_minute": 1, "burst": 1}, "beta": {"models": ["dying"]}}},
    }))
    env = {"ANTH_TEST_KEYS": ",".join(f"{k}={t}" for k, t in KEYS.items())}
    closed = f"http://127.0.0.1:{free_port()}"  # a replica that refuses connections
    with server(fake_engine_argv("m", itl_ms=1)) as e, \
            server([*fake_engine_argv("dying", itl_ms=20), "--die-after-tokens", "3"]) as dying, \
            server(gateway_argv(f"m={closed}", f"m={e.url}", f"dying={dying.url}", config=str(cfg)), env=env) as g:
        g.engine = e
        yield g


def post(g, body, key: str | None = "sk-a", path="/v1/messages", **headers) -> httpx.Response:
    if key:
        headers["x-api-key"] = key
    return httpx.post(g.url + path, json=body, headers=headers, timeout=30)


def _anthropic(r: httpx.Response, status: int, kind: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body == {"type": "error", "error": {"type": kind, "message": body["error"]["message"]}}
    return body


def test_a_dead_replica_does_not_fail_requests_and_the_route_is_counted(stack):
    for _ in range(4):  # retried on the live one, or never chosen once its scrapes fail
        r = post(stack, {"model": "m", **ASK})
        assert r.status_code == 200 and r.json()["type"] == "message"
    assert metric(stack.metrics_url, "owc_requests_total", route="/v1/messages", code="200", tenant="alpha") >= 4
    assert metric(stack.metrics_url, "owc_completion_tokens_total", tenant="alpha") >= 4 * ASK["max_tokens"]
    # The tenant's x-api-key (and any client credential) never reached the engine.
    assert metric(stack.engine.url, "owc_fake_generation_requests_total") >= 4
    assert metric(stack.engine.url, "owc_fake_client_credentials_total") == 0
    httpx.post(stack.engine.url + "/v1/messages", json={"model": "m", **ASK}, headers={"x-api-key": "sk-a"})
    assert metric(stack.engine.url, "owc_fake_client_credentials_total") == 1  # as a direct client's would


def test_limits_allow_lists_and_bounds_answer_in_anthropics_shape(stack):
    ok = post(stack, {"model": "m", **ASK}, key="sk-limited")
    assert ok.status_code == 200
    # the tenant's limit as Anthropic's headers too, beside OpenAI's (one request a minute, burst 1)
    assert ok.headers["anthropic-ratelimit-requests-limit"] == ok.headers["x-ratelimit-limit-requests"] == "1"
    assert ok.headers["anthropic-ratelimit-requests-remaining"] == "0"
    reset = datetime.fromisoformat(ok.headers["anthropic-ratelimit-requests-reset"].replace("Z", "+00:00"))
    assert 0 < (reset - datetime.now(timezone.utc)).total_seconds() <= 61
    r = post(stack, {"model": "m", **ASK}, key="sk-limited")
    _anthropic(r, 429, "rate_limit_error")
    assert r.headers["retry-after"] and r.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert "anthropic-ratelimit-requests-limit" not in post(stack, {"model": "m", **ASK}).headers  # no limits: none
    _anthropic(post(stack, {"model": "m", **ASK}, key="sk-b"), 403, "permission_error")
    _anthropic(post(stack, {"model": "nope", **ASK}), 404, "not_found_error")
    _anthropic(post(stack, {"model": "m", "messages": []}), 400, "invalid_request_error")  # max_tokens missing
    served = metric(stack.engine.url, "owc_fake_generation_requests_total")
    for path in ("/v1/messages", "/v1/messages/count_tokens"):  # no turns at all: Anthropic's 400, never the engine's answer
        body = _anthropic(post(stack, {"model": "m", "messages": [], "max_tokens": 4}, path=path), 400, "invalid_request_error")
        assert "messages" in body["error"]["message"]
    tool = {"name": "get_weather", "input_schema": {"type": "object"}}
    for bad, said in (({"tool_choice": {"type": "tool", "name": "nope"}, "tools": [tool]}, "'nope'"),
                      ({"tool_choice": {"type": "tool", "name": "get_weather"}}, "needs tools"),
                      ({"tool_choice": {"type": "any"}}, "needs tools"),  # Anthropic's 400s, not an answer without tools
                      ({"messages": [{"role": "user", "content": ""}]}, "non-empty content"),
                      ({"messages": [{"role": "user", "content": []}]}, "non-empty content"),
                      ({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]}, "text content blocks")):
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            body = _anthropic(post(stack, {"model": "m", **ASK, **bad}, path=path), 400, "invalid_request_error")
            assert said in body["error"]["message"], body
    assert metric(stack.engine.url, "owc_fake_generation_requests_total") == served
    missing = _anthropic(post(stack, {"model": "m", **ASK}, key=None), 401, "authentication_error")
    assert "x-api-key" in missing["error"]["message"]  # as Anthropic's clients send a key
    _anthropic(post(stack, {"model": "m", **ASK}, key="sk-nobody"), 401, "authentication_error")
    big = {"model": "m", **ASK, "system": "x" * 5000}
    _anthropic(post(stack, big), 413, "request_too_large")
    r = httpx.post(stack.url + "/v1/messages", content=b"{}", headers={"x-api-key": "sk-a", "content-type": "text/plain"})
    _anthropic(r, 415, "invalid_request_error")
    _anthropic(httpx.get(stack.url + "/v1/messages"), 405, "invalid_request_error")
    for status, kind in ((500, "api_error"), (503, "overloaded_error"), (422, "invalid_request_error")):
        body = {"model": "m", **ASK, "metadata": {"fake_status": status}}  # vLLM's status kept, Anthropic's type
        assert _anthropic(post(stack, body), status, kind)["error"]["message"] == f"failed with {status}"
    r = post(stack, {"model": "m", "messages": ASK["messages"]}, path="/v1/messages/count_tokens?beta=true")
    assert r.status_code == 200 and r.json()["input_tokens"] > 0


def test_an_engine_dying_mid_stream_ends_with_anthropics_error_event(stack):
    with httpx.stream("POST", stack.url + "/v1/messages", json={"model": "dying", **ASK, "max_tokens": 12, "stream": True},
                      headers={"x-api-key": "sk-b"}, timeout=30) as r:
        assert r.status_code == 200
        events = [e for e in r.read().split(b"\n\n") if e]
    assert events[0].startswith(b"event: message_start\n")
    last = events[-1]
    assert last.startswith(b"event: error\ndata: ")
    assert orjson.loads(last.split(b"data: ", 1)[1])["error"]["type"] == "api_error"
    assert all(e.startswith(b"event: ") for e in events)  # whole events, none cut


def test_anthropics_sdk_lists_and_retrieves_models(stack):
    import anthropic

    client = anthropic.Anthropic(base_url=stack.url, api_key="sk-b", max_retries=0)
    listed = client.models.list()
    # beta's allow-list: only `dying`, in Anthropic's shape
    assert [(m.id, m.type, m.display_name) for m in listed.data] == [("dying", "model", "dying")]
    assert listed.data[0].created_at.year >= 2026 and listed.has_more is False and listed.first_id == "dying"
    assert client.models.retrieve("dying").id == "dying"
    raw = client.models.with_raw_response.list()
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    with pytest.raises(anthropic.NotFoundError) as e:  # outside the allow-list: Anthropic's error shape
        client.models.retrieve("m")
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=stack.url, api_key="sk-nope", max_retries=0).models.list()
    with pytest.raises(anthropic.BadRequestError):
        client.models.list(limit=0)
    # an OpenAI client on the same route still gets OpenAI's list
    assert httpx.get(stack.url + "/v1/models", headers={"authorization": "Bearer sk-b"}).json()["object"] == "list"
