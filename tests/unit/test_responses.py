"""`POST /v1/responses` through the gateway process, in front of the fake engine (which
serves the route as vLLM does: its own `resp_` ids, named events in vLLM's order, usage in
`response.completed`), with API keys, metrics, access log and traces on: the official
openai client works unchanged, every event is relayed in order, the usage is read for the
metrics and the access log, and bad requests are OpenAI-shaped 400s."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
import yaml
from openai._models import construct_type
from openai.types.responses import ResponseStreamEvent

from cluster.gateway.admission.schemas import check_schemas
from cluster.gateway.context import Delivery, Job
from cluster.gateway.errors import OpenAIError
from cluster.gateway.stream.final_events import responses_error_event, take_response_usage
from cluster.gateway.stream.relay import _Events
from tests.conftest import fake_engine_argv, gateway_argv, metric, server

KEY = "sk-resp"
ROUTE = "/v1/responses"
TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("responses")
    cfg = d / "owc.yaml"
    cfg.write_text(yaml.safe_dump({
        "models": {"fake-model": {"source": "external", "aliases": ["fm"]}},
        "gateway": {"api_keys_env": "RESP_TEST_KEYS", "access_log": {"path": str(d / "access.log")}},
    }))
    with server(fake_engine_argv("fake-model", itl_ms=1)) as e, \
            server(gateway_argv(f"fake-model={e.url}", config=str(cfg)), env={"RESP_TEST_KEYS": f"{KEY}=team-r"}) as g:
        yield g, e, d / "access.log"


@pytest.fixture
def client(stack):
    return openai.OpenAI(base_url=stack[0].url + "/v1", api_key=KEY, max_retries=0)


def _events(url: str, body: dict, key: str | None = KEY) -> list[tuple[str, dict]]:
    """(event name, data) of a raw SSE stream, in order."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    out = []
    with httpx.stream("POST", url + ROUTE, json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for block in r.read().decode().split("\n\n"):
            if block.strip():
                name, data = block.split("\n", 1)
                out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_the_sdk_gets_a_response_with_usage_and_the_engines_own_id(client):
    r = client.responses.create(model="fm", input="Bonjour", max_output_tokens=5)
    assert r.status == "completed" and r.output_text == " tok0 tok1 tok2 tok3 tok4"
    assert r.usage.output_tokens == 5 and r.model == "fake-model"
    raw = client.responses.with_raw_response.create(model="fake-model", input="x", max_output_tokens=1,
                                                    extra_headers={"x-request-id": "resp-req-1"})
    # The client's request id travels in the header; the response id stays the engine's own
    # (vLLM makes its request id the response id: a client-chosen one could clash).
    assert raw.headers["x-request-id"] == "resp-req-1"
    assert raw.parse().id.startswith("resp_") and "resp-req-1" not in raw.parse().id


def test_stream_relays_every_event_in_order_as_the_engine_sent_it(stack):
    g, e, _ = stack
    body = {"model": "fake-model", "input": "hi", "max_output_tokens": 6, "stream": True, "reasoning": {"effort": "low"}}
    through, bare = _events(g.url, body), _events(e.url, body, key=None)
    assert [n for n, _ in through] == [n for n, _ in bare]
    assert [d["sequence_number"] for _, d in through] == list(range(len(bare)))
    assert all(n == d["type"] for n, d in through)
    names = [n for n, _ in through]
    assert names[:2] == ["response.created", "response.in_progress"] and names[-1] == "response.completed"
    assert names.index("response.reasoning_text.delta") < names.index("response.output_text.delta")
    assert through[-1][1]["response"]["usage"]["output_tokens"] == 6  # not stripped: the client's own event


def test_sdk_stream_with_tools(client):
    events = list(client.responses.create(model="fake-model", input="weather?", max_output_tokens=3, stream=True,
                                          tools=TOOLS, tool_choice="required"))
    kinds = [ev.type for ev in events]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    call = events[-1].response.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments) == {"n": 3}


def test_usage_from_response_completed_reaches_metrics_and_access_log(stack, client):
    g, _, log = stack
    labels = {"model": "fake-model", "tenant": "team-r"}
    before = {n: metric(g.metrics_url, n, **labels) for n in ("owc_prompt_tokens_total", "owc_completion_tokens_total")}
    ttft0 = metric(g.metrics_url, "owc_time_to_first_token_seconds_count", model="fake-model")
    reqs0 = metric(g.metrics_url, "owc_requests_total", route=ROUTE, code="200", tenant="team-r")
    events = list(client.responses.create(model="fake-model", input="one two three", max_output_tokens=7, stream=True,
                                          reasoning={"effort": "high"}, extra_headers={"x-request-id": "resp-log-s"}))
    usage = events[-1].response.usage
    client.responses.create(model="fake-model", input="x", max_output_tokens=4, extra_headers={"x-request-id": "resp-log-n"})
    assert metric(g.metrics_url, "owc_completion_tokens_total", **labels) - before["owc_completion_tokens_total"] == 11
    assert metric(g.metrics_url, "owc_prompt_tokens_total", **labels) - before["owc_prompt_tokens_total"] \
        == usage.input_tokens + 1
    assert metric(g.metrics_url, "owc_requests_total", route=ROUTE, code="200", tenant="team-r") - reqs0 == 2
    assert metric(g.metrics_url, "owc_time_to_first_token_seconds_count", model="fake-model") - ttft0 == 1
    rows = {}
    deadline = time.time() + 10
    while time.time() < deadline and len(rows) < 2:
        rows = {r["request_id"]: r for r in map(json.loads, log.read_text().splitlines())
                if r["request_id"].startswith("resp-log-")}
        time.sleep(0.05)
    s, n = rows["resp-log-s"], rows["resp-log-n"]
    assert (s["route"], s["stream"], s["completion_tokens"], s["reasoning_tokens"]) == (ROUTE, True, 7, 2)
    assert s["ttft_s"] is not None and s["prompt_tokens"] == usage.input_tokens
    assert (n["route"], n["stream"], n["completion_tokens"], n["reasoning_tokens"]) == (ROUTE, False, 4, 0)


def test_ignored_openai_parameters_are_accepted(client):
    r = client.responses.create(
        model="fake-model", input="x", max_output_tokens=2, service_tier="auto", safety_identifier="u-1",
        prompt_cache_key="k", prompt_cache_retention="in_memory", metadata={"a": "b"}, user="u",
        extra_body={"moderation": {"model": "omni-moderation-latest"}, "stream_options": {"include_obfuscation": False}})
    assert r.status == "completed"


@pytest.mark.parametrize("body, status, code, param", [
    ({"input": "x"}, 400, "missing_required_parameter", "model"),
    ({"model": "fake-model"}, 400, "missing_required_parameter", "input"),
    ({"model": "fake-model", "input": 3}, 400, "invalid_value", "input.str"),  # the union member, as for chat
    ({"model": "fake-model", "input": "x", "reasoning": {"effort": "extreme"}}, 400, "invalid_value", "reasoning.effort"),
    ({"model": "fake-model", "input": "x", "max_output_tokens": 0}, 400, "invalid_value", "max_output_tokens"),
    ({"model": "fake-model", "input": "x", "request_id": "mine"}, 400, "unsupported_parameter", "request_id"),
    ({"model": "fake-model", "input": "x", "frobnicate": 1}, 400, "unsupported_parameter", "frobnicate"),
    ({"model": "fake-model", "input": "x", "conversation": "conv_1"}, 400, "unsupported_parameter", "conversation"),
    # A malformed structured-output schema, streamed or not: vLLM would close the stream after response.in_progress.
    ({"model": "fake-model", "input": "x", "stream": True, "text": {"format": {"type": "json_schema", "name": "a",
      "schema": {"type": "object", "properties": {"a": {"type": "strin"}}}}}}, 400, "invalid_json_schema", "text.format.schema"),
    # Responses streams have no usage option (the usage is in response.completed).
    ({"model": "fake-model", "input": "x", "stream_options": {"include_usage": True}}, 400, "unsupported_parameter",
     "stream_options"),
    ({"model": "nope", "input": "x"}, 404, "model_not_found", "model"),
])
def test_bad_requests_are_openai_shaped(stack, body, status, code, param):
    r = httpx.post(stack[0].url + ROUTE, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"]) == (code, param), err


def test_the_route_needs_a_key(stack):
    r = httpx.post(stack[0].url + ROUTE, json={"model": "fake-model", "input": "x"}, timeout=30)
    assert r.status_code == 401
    assert httpx.get(stack[0].url + ROUTE, headers={"Authorization": f"Bearer {KEY}"}).status_code == 405


def test_usage_is_read_from_the_final_event_of_a_chunk():
    created = b'event: response.created\ndata: {"type":"response.created","response":{"usage":null}}\n\n'
    delta = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"event: response.completed\\n"}\n\n'
    done = (b'event: response.completed\ndata: {"type":"response.completed","response":{"usage":{"input_tokens":3,'
            b'"output_tokens":5,"output_tokens_details":{"reasoning_tokens":2}}}}\n\n')
    d = Delivery()
    assert not take_response_usage(created + delta, d) and d.completion_tokens is None  # model text cannot fake it
    assert take_response_usage(created + delta + done, d)
    assert (d.prompt_tokens, d.completion_tokens, d.reasoning_tokens) == (3, 5, 2)
    for final in (b"response.incomplete", b"response.failed"):
        d = Delivery()
        assert take_response_usage(done.replace(b"response.completed", final), d) and d.completion_tokens == 5


def test_chat_usage_details_and_bad_counts():
    d = Delivery()
    d.usage({"prompt_tokens": 4, "completion_tokens": 9, "completion_tokens_details": {"reasoning_tokens": 6}})
    assert (d.prompt_tokens, d.completion_tokens, d.reasoning_tokens) == (4, 9, 6)
    d.usage({"prompt_tokens": "4", "completion_tokens": -1, "completion_tokens_details": None})
    assert (d.prompt_tokens, d.completion_tokens, d.reasoning_tokens) == (None, None, None)


@pytest.mark.parametrize("after, number", [
    (b"", 0),  # nothing relayed yet
    (b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n', 1),
    (b'event: a\ndata: {"sequence_number":7}\n\nevent: b\ndata: {"delta":"x","sequence_number": 12}\n\n', 13),
    (b'event: a\ndata: {"delta":"\\"sequence_number\\":","x":1}\n\n', 0),  # the key inside a string: no number
])
def test_a_broken_responses_stream_ends_with_the_specs_error_event(after, number):
    event = responses_error_event(OpenAIError(502, "the engine's stream broke", code="engine_stream_broken"), after=after)
    name, data = event.decode().strip().split("\n")
    body = json.loads(data.removeprefix("data: "))
    assert name == "event: error"
    # ResponseErrorEvent (all five required), and the error object the OpenAI SDK raises on
    assert {k: body[k] for k in ("type", "code", "message", "param", "sequence_number")} == {
        "type": "error", "code": "engine_stream_broken", "message": "the engine's stream broke", "param": None,
        "sequence_number": number}
    assert body["error"]["code"] == "engine_stream_broken" and body["error"]["type"]


# vLLM 0.32's last event of a stream cut by max_output_tokens (recorded from the tiny gpt-oss, trimmed):
# named response.completed, its response "incomplete".
_VLLM_CUT = (b'event: response.output_item.done\ndata: {"item":{"id":"rs_1","summary":[],"type":"reasoning",'
             b'"content":[{"text":"Thinking","type":"reasoning_text"}],"encrypted_content":null,"status":null},'
             b'"output_index":0,"sequence_number":8,"type":"response.output_item.done"}\n\n'
             b'event: response.completed\ndata: {"response":{"id":"resp_1","incomplete_details":{"reason":'
             b'"max_output_tokens"},"object":"response","output":[],"status":"incomplete","usage":{"input_tokens":68,'
             b'"output_tokens":5,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":73}},'
             b'"sequence_number":9,"type":"response.completed"}\n\n')


@pytest.mark.parametrize("status, name", [("incomplete", "response.incomplete"), ("failed", "response.failed"),
                                          ("completed", "response.completed")])
def test_the_final_event_is_named_after_the_responses_status_as_openai_names_it(status, name):
    """The Agents SDK raises on `response.incomplete` (as on an unstreamed answer whose status
    is incomplete): under vLLM's name a streamed run took a cut turn for a finished one."""
    chunk = _VLLM_CUT.replace(b'"status":"incomplete"', b'"status":"%s"' % status.encode())
    d = Delivery()
    events = _Events(Job(request_id="r", route=ROUTE, model="m", tenant="t", data={}, body=b"", stream=True,
                         headers={}), d)
    out = events.feed(chunk)
    done, final = out.split(b"\n\n")[:2]
    assert done == chunk.split(b"\n\n")[0]  # the events before it, unchanged
    event_line, data = final.split(b"\n", 1)
    assert event_line == b"event: " + name.encode()
    # as the OpenAI SDK's stream reads it: the event class chosen by its type
    parsed = construct_type(type_=ResponseStreamEvent, value=json.loads(data.removeprefix(b"data: ")))
    assert type(parsed).__name__ == {"response.incomplete": "ResponseIncompleteEvent", "response.failed":
                                     "ResponseFailedEvent"}.get(name, "ResponseCompletedEvent")
    assert parsed.type == name and parsed.sequence_number == 9 and parsed.response.status == status
    assert d.completion_tokens == 5  # the usage still read


@pytest.mark.parametrize("schema, problem", [
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}, None),
    ({"type": "array", "items": [{"type": "string"}]}, None),  # Draft 7's tuple form: the engine judges it
    ({"$defs": {"s": {"type": "string"}}, "prefixItems": [{"$ref": "#/$defs/s"}]}, None),  # Draft 2020-12's
    ({"type": "nonsense"}, "'nonsense' is not valid under any of the given schemas (at 'type')"),
    ({"type": "object", "required": "a"}, "'a' is not of type 'array' (at 'required')"),
    (None, "None is not of type 'object', 'boolean'"),
])
def test_which_structured_output_schemas_reach_the_engine(schema, problem):
    for route, body in ((ROUTE, {"text": {"format": {"type": "json_schema", "name": "a", "schema": schema}}}),
                        ("/v1/chat/completions", {"response_format": {"type": "json_schema",
                                                                      "json_schema": {"name": "a", "schema": schema}}})):
        if problem is None:
            check_schemas(body, route)
            continue
        with pytest.raises(OpenAIError) as caught:
            check_schemas(body, route)
        assert caught.value.status == 400 and caught.value.code == "invalid_json_schema"
        assert caught.value.message.endswith(": " + problem)
