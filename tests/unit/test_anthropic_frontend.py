"""The Messages API's front-end, pure: errors in Anthropic's shape from every body that reaches
the gateway (vLLM's Anthropic errors, vLLM's OpenAI-shaped validation errors, FastAPI's, the
gateway's own), table-driven; the tenant key as `x-api-key`; the stream reader (usage, thinking
strip with renumbered blocks, vLLM's mid-stream error types); the prefix key led by `system`
and `tools`."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from cluster.gateway.anthropic.errors import anthropic_error, error_event
from cluster.gateway.anthropic.frontend import AnthropicFrontEnd, ErrorShape, with_bearer
from cluster.gateway.context import Delivery
from cluster.gateway.errors import OpenAIError
from cluster.gateway.stream.messages import MessagesStream, strip_thinking_body
from cluster.routing.keys import prefix_key

VLLM_404 = b'{"type":"error","error":{"type":"NotFoundError","message":"The model `x` does not exist."}}'
VLLM_400 = (b'{"error":{"message":"1 validation error: max_tokens Field required","type":"Bad Request",'
            b'"param":"body.max_tokens","code":400}}')
VLLM_BAD = b'{"type":"error","error":{"type":"BadRequestError","message":"Input should be a valid dictionary"}}'
FASTAPI_422 = b'{"detail":[{"loc":["body"],"msg":"Field required","type":"missing"}]}'

# (status, body in) -> (Anthropic type, a piece of the message out)
CASES = [
    (404, VLLM_404, "not_found_error", "does not exist"),
    (400, VLLM_400, "invalid_request_error", "max_tokens Field required"),
    (400, VLLM_BAD, "invalid_request_error", "valid dictionary"),
    (422, FASTAPI_422, "invalid_request_error", "Field required"),
    (401, orjson.dumps(OpenAIError(401, "invalid API key").body()), "authentication_error", "invalid API key"),
    (403, orjson.dumps(OpenAIError(403, "tenant 'b' may not use model 'm'").body()), "permission_error", "may not"),
    (429, orjson.dumps(OpenAIError(429, "over its limit", type="insufficient_quota").body()), "rate_limit_error",
     "over its limit"),
    (413, orjson.dumps(OpenAIError(413, "request body exceeds 10 bytes").body()), "request_too_large", "exceeds"),
    (415, orjson.dumps(OpenAIError(415, "Content-Type must be application/json").body()), "invalid_request_error",
     "Content-Type"),
    (502, orjson.dumps(OpenAIError(502, "engine error: boom").body()), "api_error", "boom"),
    (503, orjson.dumps(OpenAIError(503, "no engine replica").body()), "overloaded_error", "no engine replica"),
    (504, orjson.dumps(OpenAIError(504, "engine did not answer in time").body()), "api_error", "in time"),
    (500, b"Internal Server Error", "api_error", "Internal Server Error"),
    (529, b"", "overloaded_error", "HTTP 529"),
]


@pytest.mark.parametrize(("status", "body", "kind", "says"), CASES)
def test_every_error_body_becomes_anthropics_shape(status, body, kind, says):
    out = orjson.loads(anthropic_error(status, body))
    assert out == {"type": "error", "error": {"type": kind, "message": out["error"]["message"]}}
    assert says in out["error"]["message"]


def test_the_error_event_is_anthropics_sse_error():
    head, data = error_event(502, "the engine's stream broke").split(b"\n", 1)
    assert head == b"event: error" and data.startswith(b"data: ") and data.endswith(b"\n\n")
    assert orjson.loads(data[6:]) == {"type": "error", "error": {"type": "api_error", "message": "the engine's stream broke"}}


@pytest.mark.parametrize(("headers", "authorization"), [
    ([(b"x-api-key", b"sk-a")], b"Bearer sk-a"),
    ([(b"X-Api-Key", b" sk-a ")], b"Bearer sk-a"),
    ([(b"authorization", b"Bearer sk-b"), (b"x-api-key", b"sk-a")], b"Bearer sk-b"),  # the client's own wins
    ([(b"authorization", b"Bearer sk-b")], b"Bearer sk-b"),
    ([], None),
])
def test_x_api_key_becomes_the_bearer_credential_and_leaves(headers, authorization):
    out = with_bearer(headers)
    assert dict(out).get(b"authorization") == authorization
    assert not any(k.lower() == b"x-api-key" for k, _ in out)


def _run(app, path="/v1/messages", method="POST", headers=()):
    sent: list[dict] = []

    async def send(m):
        sent.append(m)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    asyncio.run(app({"type": "http", "path": path, "method": method, "headers": list(headers)}, receive, send))
    return sent


def test_the_front_end_hands_admission_the_bearer_key_and_reshapes_its_errors():
    seen = {}

    async def admission(scope, receive, send):
        seen["headers"] = scope["headers"]
        body = orjson.dumps(OpenAIError(401, "invalid API key").body())
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"3"), (b"x-request-id", b"r1")]})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    sent = _run(AnthropicFrontEnd(admission), headers=[(b"x-api-key", b"sk-x")])
    assert seen["headers"] == [(b"authorization", b"Bearer sk-x")]
    start, body = sent
    assert start["status"] == 401 and (b"x-request-id", b"r1") in start["headers"]
    assert (b"request-id", b"r1") in start["headers"]  # Anthropic's SDK: APIStatusError.request_id
    assert dict(start["headers"])[b"content-length"] == str(len(body["body"])).encode()
    assert orjson.loads(body["body"])["error"]["type"] == "authentication_error"


def test_a_stream_passes_the_error_shape_untouched_and_get_is_405():
    sent: list[dict] = []

    async def send(m):
        sent.append(m)

    shaped = ErrorShape(send)
    events = [{"type": "http.response.start", "status": 200, "headers": []},
              {"type": "http.response.body", "body": b"event: ping\ndata: {}\n\n", "more_body": True}]
    for m in events:
        asyncio.run(shaped(m))
    assert sent == events
    start, body = _run(AnthropicFrontEnd(None), method="GET")
    assert start["status"] == 405 and orjson.loads(body["body"])["error"]["type"] == "invalid_request_error"


def test_every_answer_carries_anthropics_request_id_header():
    """Anthropic's SDK reads ``request-id`` (Message._request_id, MessageStream.request_id,
    APIStatusError.request_id); owc's ``x-request-id`` stays as well."""
    sent: list[dict] = []

    async def send(m):
        sent.append(m)

    shaped = ErrorShape(send)
    asyncio.run(shaped({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream"), (b"x-request-id", b"abc")]}))
    assert dict(sent[0]["headers"])[b"request-id"] == b"abc" and dict(sent[0]["headers"])[b"x-request-id"] == b"abc"
    sent.clear()
    asyncio.run(shaped({"type": "http.response.start", "status": 429, "headers": [(b"x-request-id", b"def")]}))
    asyncio.run(shaped({"type": "http.response.body", "body": b'{"error":{"message":"slow down"}}'}))
    assert dict(sent[0]["headers"])[b"request-id"] == b"def"
    sent.clear()
    asyncio.run(shaped({"type": "http.response.start", "status": 200,
                        "headers": [(b"x-request-id", b"a"), (b"request-id", b"kept")]}))
    assert [v for k, v in sent[0]["headers"] if k == b"request-id"] == [b"kept"]


def _sse(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


STREAM = b"".join([
    _sse("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 68, "output_tokens": 0}}}),
    _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": ""}}),
    _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "hm"}}),
    _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
    _sse("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
    _sse("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}}),
    _sse("content_block_stop", {"type": "content_block_stop", "index": 1}),
    _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 18}}),
    _sse("message_stop", {"type": "message_stop"}),
])


def test_the_stream_reader_reads_usage_and_relays_the_events_unchanged():
    d = Delivery()
    out, tokens = MessagesStream(strip_thinking=False).chunk(STREAM, d)
    assert out == STREAM and tokens
    assert (d.prompt_tokens, d.completion_tokens) == (68, 18)  # message_delta left the input tokens out


def test_a_stream_cut_before_its_message_delta_is_charged_the_tokens_relayed():
    """message_start's usage says output_tokens 0 (nothing generated yet): a stream whose client
    left (or whose engine died) after some deltas is charged its input and one token per delta
    relayed, as a chat stream cut short is — not 0 output tokens."""
    from cluster.tenancy.charging import Outcome, charge

    cut = STREAM[:STREAM.index(b"event: content_block_stop")]  # start, a block, one delta
    d = Delivery()
    MessagesStream(strip_thinking=False).chunk(cut, d)
    assert (d.prompt_tokens, d.completion_tokens) == (68, None)
    assert charge(Outcome(499, d.prompt_tokens, d.completion_tokens, token_events=1), estimate=10) == (68, 1)


def test_strip_leaves_thinking_blocks_out_and_renumbers_the_rest():
    d = Delivery()
    reader = MessagesStream(strip_thinking=True)
    out = b"".join(reader.chunk(e + b"\n\n", d)[0] for e in STREAM.split(b"\n\n") if e)  # one event per read
    events = [orjson.loads(e.split(b"data: ", 1)[1]) for e in out.split(b"\n\n") if e]
    assert [e["type"] for e in events] == ["message_start", "content_block_start", "content_block_delta",
                                           "content_block_stop", "message_delta", "message_stop"]
    assert [e.get("index") for e in events if "index" in e] == [0, 0, 0] and b"thinking" not in out
    assert d.completion_tokens == 18  # the thinking tokens still count
    body = orjson.dumps({"content": [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "Hi"}]})
    assert orjson.loads(strip_thinking_body(body))["content"] == [{"type": "text", "text": "Hi"}]


def test_vllms_mid_stream_error_gets_anthropics_type():
    event = _sse("error", {"type": "error", "error": {"type": "internal_error", "message": "boom"}})
    out, _ = MessagesStream(strip_thinking=False).chunk(event, Delivery())
    assert orjson.loads(out.split(b"data: ", 1)[1])["error"] == {"type": "api_error", "message": "boom"}


def test_the_prefix_key_starts_from_system_and_tools():
    tools = [{"name": "read_file", "input_schema": {"type": "object"}}]
    a = {"system": "You are a coding agent.", "tools": tools, "messages": [{"role": "user", "content": "fix a.py"}]}
    b = {**a, "messages": [{"role": "user", "content": "optimise b.py"}]}
    shared = ("system", "tools")
    assert prefix_key(a, 60, preamble=shared) == prefix_key(b, 60, preamble=shared)
    assert prefix_key(a, 60, preamble=shared).startswith(b"\x1esystem\x1dYou are a coding agent.\x1etools\x1d")
    assert prefix_key(a, 4096, preamble=shared) != prefix_key(b, 4096, preamble=shared)
    other_tools = {**a, "tools": [{"name": "run", "input_schema": {}}]}
    assert prefix_key(a, 200, preamble=shared) != prefix_key(other_tools, 200, preamble=shared)
