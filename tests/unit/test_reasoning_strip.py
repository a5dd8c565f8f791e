"""The reasoning strip on SSE streams and whole answers in vLLM 0.32's format: streams
recorded from the tiny gpt-oss model on vLLM-CPU (tests/unit/data/, when present) and built
ones, table-driven; each stripped Responses stream goes through the openai SDK's own stream
state machine (the one `client.responses.stream()` runs), which checks output indexes."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from cluster.config.schema import OwcConfig
from cluster.gateway.stream.reasoning import (
    ResponsesStripper, StreamStrip, exposure, split_events, strip_body, strip_chat_events,
)

DATA = Path(__file__).parent / "data"


def _ev(data: dict) -> bytes:
    return b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _resp(output: list, status: str = "completed") -> dict:
    return {"id": "resp_1", "object": "response", "created_at": 1, "model": "m", "status": status,
            "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "reasoning": {"effort": "low"},
            "usage": {"input_tokens": 5, "output_tokens": 9, "total_tokens": 14,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 4}} if status == "completed" else None}


REASONING = {"id": "rs_1", "type": "reasoning", "summary": [],
             "content": [{"type": "reasoning_text", "text": "think think"}]}
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
           "content": [{"type": "output_text", "text": "Hi there", "annotations": []}]}
CALL = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}",
        "status": "completed"}


def built_stream(items: list[dict]) -> bytes:
    """A Responses stream as vLLM 0.32 writes it for these output items."""
    evs = [{"type": "response.created", "response": _resp([], "in_progress")},
           {"type": "response.in_progress", "response": _resp([], "in_progress")}]
    for i, item in enumerate(items):
        evs.append({"type": "response.output_item.added", "output_index": i, "item": {**item, "status": "in_progress"}})
        if item["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": ""}
            evs.append({"type": "response.content_part.added", "output_index": i, "item_id": item["id"],
                        "content_index": 0, "part": part})
            for d in ("think", " think"):
                evs.append({"type": "response.reasoning_text.delta", "output_index": i, "item_id": item["id"],
                            "content_index": 0, "delta": d})
            evs.append({"type": "response.reasoning_text.done", "output_index": i, "item_id": item["id"],
                        "content_index": 0, "text": "think think"})
            evs.append({"type": "response.content_part.done", "output_index": i, "item_id": item["id"],
                        "content_index": 0, "part": {**part, "text": "think think"}})
        elif item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": []}
            evs.append({"type": "response.content_part.added", "output_index": i, "item_id": item["id"],
                        "content_index": 0, "part": part})
            for d in ("Hi", " there"):
                evs.append({"type": "response.output_text.delta", "output_index": i, "item_id": item["id"],
                            "content_index": 0, "delta": d, "logprobs": []})
            evs.append({"type": "response.output_text.done", "output_index": i, "item_id": item["id"],
                        "content_index": 0, "text": "Hi there", "logprobs": []})
            evs.append({"type": "response.content_part.done", "output_index": i, "item_id": item["id"],
                        "content_index": 0, "part": {**part, "text": "Hi there"}})
        else:
            evs.append({"type": "response.function_call_arguments.delta", "output_index": i, "item_id": item["id"],
                        "delta": "{}"})
            evs.append({"type": "response.function_call_arguments.done", "output_index": i, "item_id": item["id"],
                        "arguments": "{}", "name": "f"})
        evs.append({"type": "response.output_item.done", "output_index": i, "item": item})
    evs.append({"type": "response.completed", "response": _resp(items)})
    return b"".join(_ev({**e, "sequence_number": n}) for n, e in enumerate(evs))


def recorded(name: str) -> bytes | None:
    p = DATA / name
    return p.read_bytes() if p.exists() else None


def sdk_parse(stream: bytes):
    """The stream through the SDK's state machine; the final response."""
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    seqs, added = [], []
    for raw in split_events(stream):
        data = json.loads(raw[raw.index(b"data: ") + 6:])
        seqs.append(data["sequence_number"])
        event = construct_type(type_=ResponseStreamEvent, value=data)
        state.handle_event(event)
        if data["type"] == "response.output_item.added":
            added.append(data["output_index"])
    assert seqs == list(range(len(seqs)))
    assert added == list(range(len(added)))  # items numbered as a stream without reasoning would be
    return data


RESPONSES_STREAMS = {
    "reasoning+message": [REASONING, MESSAGE],
    "reasoning+call": [REASONING, CALL],
    "message only": [MESSAGE],
    "reasoning, message, reasoning, call": [REASONING, MESSAGE, {**REASONING, "id": "rs_2"}, CALL],
}


def _responses_cases():
    cases = [pytest.param(built_stream(items), id=name) for name, items in RESPONSES_STREAMS.items()]
    for name in ("gptoss_responses_stream.sse", "gptoss_responses_tool_stream.sse"):
        raw = recorded(name)
        if raw is not None:
            cases.append(pytest.param(raw, id=f"recorded {name}"))
    return cases


@pytest.mark.parametrize("stream", _responses_cases())
@pytest.mark.parametrize("chunking", ["whole", "per event", "pairs"])
def test_responses_stream_strip_leaves_a_valid_stream_without_reasoning(stream, chunking):
    sdk_parse(stream)  # the input itself is valid
    events = split_events(stream)
    chunks = {"whole": [stream], "per event": events,
              "pairs": [b"".join(events[i:i + 2]) for i in range(0, len(events), 2)]}[chunking]
    s = StreamStrip("/v1/responses")
    out = b"".join(s.chunk(c) for c in chunks)
    assert b"reasoning_text" not in out and b'"type":"reasoning"' not in out and b"response.reasoning" not in out
    final = sdk_parse(out)
    kept = [e for e in split_events(stream) if b'"reasoning' not in e.split(b"\n")[0]]
    assert final["type"] == "response.completed"
    assert [i["type"] for i in final["response"]["output"]] == [
        i["type"] for i in json.loads(split_events(stream)[-1].split(b"data: ", 1)[1])["response"]["output"]
        if i["type"] != "reasoning"]
    # usage still counts the reasoning tokens
    orig_usage = json.loads(split_events(stream)[-1].split(b"data: ", 1)[1])["response"]["usage"]
    assert final["response"]["usage"] == orig_usage
    assert kept  # something other than reasoning was there


def test_output_indexes_renumbered_after_each_dropped_item():
    st = ResponsesStripper()
    out = split_events(st.events(built_stream([REASONING, MESSAGE, {**REASONING, "id": "rs_2"}, CALL])))
    idx = [json.loads(e.split(b"data: ", 1)[1]).get("output_index") for e in out]
    assert [i for i in idx if i is not None] == [0] * 7 + [1] * 4


def test_a_stream_without_reasoning_is_unchanged_semantically():
    s = built_stream([MESSAGE])
    assert [orjson.loads(e.split(b"data: ", 1)[1]) for e in split_events(StreamStrip("/v1/responses").chunk(s))] \
        == [orjson.loads(e.split(b"data: ", 1)[1]) for e in split_events(s)]


def _chat(delta: dict, finish=None, usage=None, choices=True) -> bytes:
    d = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
    if usage:
        d["usage"] = usage
    return b"data: " + orjson.dumps(d) + b"\n\n"


CHAT_CASES = {
    "reasoning then content": ([_chat({"role": "assistant", "content": ""}), _chat({"reasoning": "hm"}),
                                _chat({"reasoning": " ok"}), _chat({"content": "Hi"}), _chat({}, "stop"),
                                _chat({}, choices=False, usage={"completion_tokens": 5,
                                      "completion_tokens_details": {"reasoning_tokens": 2}}), b"data: [DONE]\n\n"],
                               [b'"role"', b'"Hi"', b'"stop"', b"reasoning_tokens", b"[DONE]"]),
    "reasoning_content name": ([_chat({"reasoning_content": "hm", "content": "A"})], [b'"A"']),
    "reasoning with finish": ([_chat({"reasoning": "x"}, "length")], [b'"length"']),
}


@pytest.mark.parametrize("name", list(CHAT_CASES))
def test_chat_stream_strip(name):
    events, must = CHAT_CASES[name]
    out = strip_chat_events(b"".join(events))
    for m in must:
        assert m in out
    for e in split_events(out):
        if e.startswith(b"data: {"):
            for c in orjson.loads(e[6:])["choices"]:
                assert "reasoning" not in c["delta"] and "reasoning_content" not in c["delta"]
    assert b'"reasoning"' not in out and b'"reasoning_content"' not in out


def test_recorded_chat_stream_strip():
    raw = recorded("gptoss_chat_stream.sse")
    if raw is None:
        pytest.skip("no recorded chat stream")
    assert b'"reasoning"' in raw
    out = StreamStrip("/v1/chat/completions").chunk(raw)
    assert b'"reasoning"' not in out and b"[DONE]" in out
    content = "".join(orjson.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                      for e in split_events(out) if e.startswith(b"data: {") and orjson.loads(e[6:])["choices"])
    orig = "".join(orjson.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                   for e in split_events(raw) if e.startswith(b"data: {") and orjson.loads(e[6:])["choices"])
    assert content == orig


def test_whole_bodies():
    chat = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "A", "reasoning": "r",
                                                 "reasoning_content": "r"}}], "usage": {"completion_tokens": 3}}
    out = orjson.loads(strip_body("/v1/chat/completions", orjson.dumps(chat)))
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "A"} and out["usage"] == chat["usage"]
    resp = _resp([REASONING, MESSAGE])
    out = orjson.loads(strip_body("/v1/responses", orjson.dumps(resp)))
    assert [i["type"] for i in out["output"]] == ["message"] and out["usage"] == resp["usage"]
    assert out["reasoning"] == {"effort": "low"}  # the request's setting, not reasoning output
    err = b'{"error":{"message":"reasoning bad"}}'
    assert strip_body("/v1/completions", b'{"reasoning": 1}') == b'{"reasoning": 1}'
    assert strip_body("/v1/chat/completions", b"not json reasoning") == b"not json reasoning"
    assert orjson.loads(strip_body("/v1/responses", err)) == orjson.loads(err)


def test_policy_per_model_and_tenant_override():
    cfg = OwcConfig.model_validate({
        "models": {"a": {"source": "external", "reasoning": {"expose": "strip"}}, "b": {"source": "external"}},
        "gateway": {"tenants": {"open": {"reasoning": {"expose": "expose"}}, "closed": {"reasoning": {"expose": "strip"}},
                                "plain": {}}},
    })
    assert [exposure(cfg, "a", t) for t in ("open", "closed", "plain", "unknown")] == ["expose", "strip", "strip", "strip"]
    assert [exposure(cfg, "b", t) for t in ("open", "closed", "plain", "unknown")] == ["expose", "strip", "expose", "expose"]
    with pytest.raises(ValueError):
        OwcConfig.model_validate({"models": {"a": {"source": "external", "reasoning": {"expose": "hide"}}}})
