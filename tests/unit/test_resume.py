"""The resume bookkeeping (cluster.gateway.stream.resume) on streams recorded from vLLM 0.32 with
`return_token_ids` (tests/unit/data/vllm_streams_with_token_ids.json: a chat stream, a
completions stream whose engine held a token back for an incomplete character, and the
/v1/completions continuation of the chat stream after its 5th token): the ids delivered,
the tokens left, the continuation's body, the continuation rewritten into the chat
stream's shape with the whole request's usage, and which requests can be resumed."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from cluster.gateway.admission.params import CHAT, COMPLETIONS, RESPONSES
from cluster.gateway.stream.resumable import not_resumable
from cluster.gateway.stream.resume import StreamLedger

REC = json.loads((Path(__file__).parent / "data" / "vllm_streams_with_token_ids.json").read_text())


def _events(sse: str) -> list[bytes]:
    return [e.encode() + b"\n\n" for e in sse.split("\n\n") if e]


def _objs(out: bytes) -> list[dict]:
    return [orjson.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]


CHAT_EVENTS = _events(REC["chat"]["sse"])
CHAT_IDS = [t for o in _objs(b"".join(CHAT_EVENTS)) for c in o["choices"] for t in c.get("token_ids") or []]
CHAT_PROMPT = orjson.loads(CHAT_EVENTS[0][6:])["prompt_token_ids"]


@pytest.mark.parametrize("cut", [0, 1, 5, 11])
def test_a_chat_stream_cut_after_k_tokens_continues_from_prompt_plus_k_ids(cut):
    ledger = StreamLedger(CHAT, REC["chat"]["request"])
    for e in CHAT_EVENTS[:1 + cut]:  # the role event, then one event per token
        ledger.take(e)
    assert ledger.delivered == CHAT_IDS[:cut] and ledger.held == []
    assert ledger.remaining() == 12 - cut and ledger.resumable
    body = orjson.loads(ledger.continuation())
    assert body["prompt"] == CHAT_PROMPT + CHAT_IDS[:cut]
    assert body["max_tokens"] == 12 - cut and body["stream"] and body["return_token_ids"]
    assert body["temperature"] == 0 and body["ignore_eos"] is True
    assert "messages" not in body and "stream_options" in body


# (events of the recorded completions stream read, ids delivered, ids held back)
COMPLETION_CASES = [
    (1, [221], []),
    (2, [221], [156]),  # "": the engine holds the token back (half a character)
    (3, [221, 156, 221], []),  # its text arrives with the next token's: both delivered
]


@pytest.mark.parametrize("n, delivered, held", COMPLETION_CASES)
def test_held_back_ids_are_not_delivered_and_the_continuation_regenerates_them(n, delivered, held):
    rec = REC["completions"]
    ledger = StreamLedger(COMPLETIONS, rec["request"])
    for e in _events(rec["sse"])[:n]:
        ledger.take(e)
    assert (ledger.delivered, ledger.held) == (delivered, held)
    body = orjson.loads(ledger.continuation())
    assert body["prompt"] == [562, 18, 227, 80, 75] + delivered
    assert body["max_tokens"] == 12 - len(delivered)


def test_the_client_sees_one_chat_stream_with_the_whole_text_and_usage():
    ledger = StreamLedger(CHAT, REC["chat"]["request"])
    out = b"".join(ledger.take(e) for e in CHAT_EVENTS[:6])  # role + 5 tokens, then the engine dies
    assert orjson.loads(ledger.continuation())["prompt"] == REC["chat_continuation_after_5"]["request"]["prompt"]
    ledger.resumed()
    out += b"".join(ledger.take(e) for e in _events(REC["chat_continuation_after_5"]["sse"]))
    objs = _objs(out)
    assert {o["id"] for o in objs} == {orjson.loads(CHAT_EVENTS[0][6:])["id"]}
    assert {o["object"] for o in objs} == {"chat.completion.chunk"}
    text = "".join(c["delta"].get("content") or "" for o in objs for c in o["choices"])
    whole = _objs(b"".join(CHAT_EVENTS))
    assert text == "".join(c["delta"].get("content") or "" for o in whole for c in o["choices"])
    assert objs[-1]["usage"] == whole[-1]["usage"] == {"prompt_tokens": 42, "completion_tokens": 12, "total_tokens": 54}
    assert [c["finish_reason"] for o in objs for c in o["choices"]][-1] == "length"
    assert b"token_ids" not in out and b"prompt_text" not in out
    assert out.endswith(b"data: [DONE]\n\n")


def test_a_second_death_resumes_from_everything_delivered_so_far():
    ledger = StreamLedger(CHAT, REC["chat"]["request"])
    for e in CHAT_EVENTS[:6]:
        ledger.take(e)
    ledger.resumed()
    for e in _events(REC["chat_continuation_after_5"]["sse"])[:3]:
        ledger.take(e)
    assert ledger.delivered == CHAT_IDS[:8] and ledger.remaining() == 4
    assert orjson.loads(ledger.continuation())["prompt"] == CHAT_PROMPT + CHAT_IDS[:8]
    ledger.resumed()
    assert ledger.usage({"prompt_tokens": 50, "completion_tokens": 4}) == \
        {"prompt_tokens": 42, "completion_tokens": 12, "total_tokens": 54}


VLLM_ENGINE_DEAD = (b'data: {"error":{"message":"EngineCore encountered an issue. See stack trace (above) for the '
                    b'root cause.","type":"InternalServerError","param":null,"code":500}}\n\n')


def test_the_engines_own_error_event_breaks_the_stream_after_what_came_before_it():
    """vLLM ends a stream whose engine core died with an error event and [DONE]: the events
    before it in the same read still go out and count as delivered; it and what follows do not."""
    ledger = StreamLedger(CHAT, REC["chat"]["request"])
    for e in CHAT_EVENTS[:5]:
        ledger.take(e)
    out = ledger.take(CHAT_EVENTS[5] + VLLM_ENGINE_DEAD + b"data: [DONE]\n\n")
    assert [o["choices"][0]["delta"] for o in _objs(out)] == [_objs(CHAT_EVENTS[5])[0]["choices"][0]["delta"]]
    assert b"error" not in out and b"[DONE]" not in out
    assert ledger.failed.startswith("EngineCore encountered") and ledger.resumable
    assert orjson.loads(ledger.continuation())["prompt"] == CHAT_PROMPT + CHAT_IDS[:5]
    ledger.resumed()
    assert ledger.failed is None


@pytest.mark.parametrize("event, failed", [
    ({"error": {"message": "m", "type": "InternalServerError", "code": 500}}, "m"),
    ({"error": {"message": "m", "type": "BadRequestError", "code": 400}}, None),  # the request's: not resumed
    ({"error": "text"}, None),
    ({"choices": [{"index": 0}], "error": {"code": 500}}, None),
    ({"choices": [], "usage": {}}, None),
])
def test_which_events_are_the_engines_failure(event, failed):
    from cluster.gateway.stream.resume import engine_failure

    assert engine_failure(event) == failed


def test_a_stream_broken_after_its_last_token_needs_only_its_end():
    ledger = StreamLedger(CHAT, REC["chat"]["request"])
    for e in CHAT_EVENTS[:13]:  # every token, the last with finish_reason; no usage, no [DONE]
        ledger.take(e)
    assert ledger.finish_reason == "length" and ledger.remaining() == 0 and not ledger.resumable
    end = ledger.epilogue(include_usage=True)
    assert _objs(end)[0]["usage"] == {"prompt_tokens": 42, "completion_tokens": 12, "total_tokens": 54}
    assert end.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("data, max_model_len, remaining", [
    ({"max_tokens": 12}, None, 7),
    ({"max_completion_tokens": 9, "max_tokens": 30}, None, 4),
    ({}, 1024, 1024 - 42 - 5),  # no bound asked for: the context's
    ({}, None, None),  # unknown: vLLM's own bound (the context)
])
def test_tokens_left(data, max_model_len, remaining):
    ledger = StreamLedger(CHAT, {"model": "m", **data}, max_model_len=max_model_len)
    for e in CHAT_EVENTS[:6]:
        ledger.take(e)
    assert ledger.remaining() == remaining
    assert orjson.loads(ledger.continuation()).get("max_tokens") == remaining


NOT_RESUMABLE = [
    (CHAT, {"n": 2}, False, "n > 1"),
    (CHAT, {"logprobs": True}, False, "logprobs"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f"}}]}, False, "tools"),
    (CHAT, {"response_format": {"type": "json_object"}}, False, "structured outputs"),
    (CHAT, {"stop": ["\n"]}, False, "stop strings"),
    (CHAT, {}, True, "parsed output"),  # gpt-oss (harmony), a reasoning parser
    (COMPLETIONS, {"prompt": ["a", "b"]}, False, "batch of prompts"),
    (COMPLETIONS, {"prompt": "a", "echo": True}, False, "echo"),
    (COMPLETIONS, {"prompt": "a", "best_of": 2}, False, "n > 1"),
    (RESPONSES, {"input": "a"}, False, "route"),
    (CHAT, {"n": 1, "logprobs": False, "stop": [], "temperature": 0.7}, False, None),
    (COMPLETIONS, {"prompt": [1, 2, 3]}, True, None),  # completions are never parsed
]


@pytest.mark.parametrize("route, data, parsed, why", NOT_RESUMABLE)
def test_which_requests_can_be_resumed(route, data, parsed, why):
    assert not_resumable(route, data, parsed_chat=parsed) == why


@pytest.mark.parametrize("model, parsed", [
    ({"source": "demo:tiny-llama"}, False),
    ({"source": "demo:tiny-gpt-oss"}, True),
    ({"source": "openai/gpt-oss-120b"}, True),
    ({"source": "Qwen/Qwen3-8B", "engine_kwargs": {"reasoning_parser": "qwen3"}}, True),
])
def test_models_whose_chat_output_the_engine_parses(model, parsed):
    from cluster.config.schema import ModelConfig

    assert ModelConfig(**model).parses_chat_output is parsed


def test_an_unbounded_chat_stream_asks_the_engine_for_its_context():
    """No max_tokens and no max_model_len in the config: the continuation would stop after
    /v1/completions' default 16 tokens; the replica that continues says its context first."""
    ledger = StreamLedger(CHAT, {"model": "m"})
    for e in CHAT_EVENTS[:6]:
        ledger.take(e)
    route, body = ledger.render
    assert route == "/tokenize" and orjson.loads(body)["model"] == "m"
    with pytest.raises(ValueError):
        ledger.rendered(b'{"object":"error"}')
    ledger.rendered(b'{"count":1,"max_model_len":1024,"tokens":[13],"token_strs":null}')
    assert orjson.loads(ledger.continuation())["max_tokens"] == 1024 - 42 - 5
    assert StreamLedger(CHAT, {"model": "m", "max_tokens": 8}).render is None
    assert StreamLedger(CHAT, {"model": "m"}, max_model_len=2048).render is None
    assert StreamLedger(COMPLETIONS, {"model": "m", "prompt": "a"}).render is None  # its default is 16 anyway
