"""Record the gpt-oss streams the harmony resume unit tests replay (tests/unit/test_resume_harmony.py):

    python -m tests.integration.gpt_oss.record_streams --engine URL [--out FILE]

against a vLLM server of the tiny gpt-oss (tests/integration/gpt_oss/conftest.py's
engine_argv, which passes --enable-scale-out). For each request: the stream as a client
gets it, the stream as the gateway asks for it (chat: with `return_token_ids`), vLLM's
render answer, and for a few cut points the continuation the ledger sends
(cluster.gateway.stream.harmony_chat / harmony_responses) with the engine's answer to it."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import httpx

from cluster.gateway.stream.harmony_chat import HarmonyChatLedger
from cluster.gateway.stream.harmony_responses import ResponsesLedger

OUT = Path(__file__).resolve().parents[2] / "unit" / "data" / "gptoss_resume_streams.json"
MODEL = "tiny-gpt-oss"
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
           "additionalProperties": False}
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Get the weather",
                                         "parameters": WEATHER, "strict": True}}
TOOLS_AUTO = [{"type": "function", "function": {**TOOL["function"], "strict": False}}]
RTOOL = {"type": "function", "name": "get_weather", "description": "Get the weather", "parameters": WEATHER, "strict": True}
# name: (request, cut points): a cut is the number of the engine's events delivered before it
# died, or (that, events of the first continuation delivered before it died too).
CHAT = {
    "chat": ({"model": MODEL, "messages": ASK, "max_tokens": 64, "temperature": 0}, (1, 3, 5, 7, 12, 15)),
    "chat_short": ({"model": MODEL, "messages": ASK, "max_tokens": 9, "temperature": 0}, (5,)),
    "chat_tools_auto": ({"model": MODEL, "messages": ASK, "tools": TOOLS_AUTO, "max_tokens": 64, "temperature": 0},
                        (4,)),
    "chat_tools": ({"model": MODEL, "messages": ASK, "tools": [TOOL], "tool_choice": "required", "max_tokens": 96,
                    "temperature": 0}, (2, 8, 11, 15, 28, 30, 33, 41, (5, 10))),
}
RESPONSES = {
    "responses": ({"model": MODEL, "input": "What is the weather in Paris?", "max_output_tokens": 64,
                   "temperature": 0, "store": False}, (3, 5, 7, 9, 10, 13, 18)),
    "responses_short": ({"model": MODEL, "input": "What is the weather in Paris?", "max_output_tokens": 9,
                         "temperature": 0, "store": False}, (5,)),
    "responses_tools": ({"model": MODEL, "input": "What is the weather in Paris?", "max_output_tokens": 96,
                         "temperature": 0, "store": False, "tool_choice": "required", "tools": [RTOOL]},
                        (3, 9, 10, 13, 21, 22, (5, 12))),
}


def _sse(client: httpx.Client, url: str, body: dict) -> str:
    with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        return r.read().decode()


def _events(sse: str) -> list[bytes]:
    return [e.encode() + b"\n\n" for e in sse.split("\n\n") if e]


def _continue(client: httpx.Client, engine: str, ledger, events: list[bytes], cut, rendered: str) -> dict:
    cut, then = cut if isinstance(cut, tuple) else (cut, None)
    for e in events[:cut]:
        ledger.take(e)
    out = {"after_events": cut, **_send(client, engine, ledger, rendered)}
    if then is not None:  # the continuation's engine dies too, after `then` of its events
        ledger.resumed()
        for e in _events(out["sse"])[:then]:
            ledger.take(e)
        out["then"] = {"after_events": then, **_send(client, engine, ledger, rendered)}
    return out


def _send(client: httpx.Client, engine: str, ledger, rendered: str) -> dict:
    if ledger.render is not None:
        ledger.rendered(rendered.encode())
    body = ledger.continuation()
    return {"route": ledger.continuation_route, "request_sha256": hashlib.sha256(body).hexdigest(),
            "sse": _sse(client, engine + ledger.continuation_route, json.loads(body))}


def record(engine: str) -> dict:
    out: dict = {"engine": engine, "chat": {}, "responses": {}}
    with httpx.Client(timeout=120) as client:
        for name, (body, cuts) in CHAT.items():
            stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
            asked = {**stream, "return_token_ids": True}
            rec = {"request": stream, "sse": _sse(client, engine + "/v1/chat/completions", stream),
                   "engine_request": asked, "engine_sse": _sse(client, engine + "/v1/chat/completions", asked),
                   "render": client.post(engine + "/v1/chat/completions/render", json=asked).text}
            rec["continuations"] = [_continue(client, engine, HarmonyChatLedger(asked), _events(rec["engine_sse"]), c,
                                              rec["render"]) for c in cuts]
            out["chat"][name] = rec
        for name, (body, cuts) in RESPONSES.items():
            stream = {**body, "stream": True}
            rec = {"request": stream, "sse": _sse(client, engine + "/v1/responses", stream),
                   "render": client.post(engine + "/v1/responses/render", json=stream).text}
            rec["continuations"] = [_continue(client, engine, ResponsesLedger(stream), _events(rec["sse"]), c,
                                              rec["render"]) for c in cuts]
            out["responses"][name] = rec
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", required=True)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    a.out.write_text(json.dumps(record(a.engine.rstrip("/")), indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
