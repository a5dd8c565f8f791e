"""Stream resume for gpt-oss Responses streams: reasoning, output text and function calls.

vLLM's Responses events carry no token ids and no prompt. The ledger reads the events the
client receives: the response object of `response.created`, each output item (its index,
id, call id, the text of its deltas), the last `sequence_number`. When the engine dies, the
replica that continues renders the same request (`/v1/responses/render`: the prompt's
tokens and vLLM's sampling parameters, its grammar included), and the output so far is
written again as harmony tokens (cluster.gateway.stream.splice): each finished item as its
message, the open item's header and the text of each delta encoded on its own (a delta is
what one engine step wrote). The continuation's tokens become the events vLLM writes
(cluster.gateway.stream.responses_events): the open item goes on under its id and
`output_index`, new items get new ids, `sequence_number` goes on from the last one sent,
and `response.completed` carries every item the client read and the usage of the whole
request (its `output_tokens` count the output re-encoded: where the model's own tokens
split the text otherwise, e.g. a header written under a grammar, they differ by that)."""

from __future__ import annotations

from typing import Any

import orjson

from cluster.gateway.context import RESPONSES
from cluster.gateway.stream import harmony
from cluster.gateway.stream.responses_events import Emitter, Item
from cluster.gateway.stream.splice import GENERATE, Splice, continuation_chunk, generate_body, read_rendered

RENDER = RESPONSES + "/render"
_FINAL = ("response.completed", "response.incomplete", "response.failed")
_ADDED, _DONE = "response.output_item.added", "response.output_item.done"
_DONE_GROUP = ("response.reasoning_text.done", "response.output_text.done", "response.content_part.done",
               "response.function_call_arguments.done")
_DELTAS = ("response.reasoning_text.delta", "response.output_text.delta", "response.function_call_arguments.delta")


class ResponsesLedger:
    """What one gpt-oss Responses stream delivered, and its continuation's events."""

    route = RESPONSES
    continuation_route = GENERATE

    def __init__(self, data: dict[str, Any], *, max_model_len: int | None = None):
        self._data = data
        self._max_model_len = max_model_len
        self.finish_reason: str | None = None
        self.resumes = 0
        self.continuing = False
        self.render: tuple[str, bytes] | None = (RENDER, orjson.dumps(data))
        self._response: dict[str, Any] | None = None  # response.created's object
        self._seq = -1
        self.items: list[Item] = []  # every output item the client has, in order
        self._rendered: dict[str, Any] | None = None
        self._prompt: list[int] = []
        self._output: list[int] = []  # the turn's tokens (re-encoded, then the continuation's)
        self._splice: Splice | None = None
        self._restart: int | None = None  # where an open function call's message began
        self._emitter: Emitter | None = None
        # A continuation's engine refused or failed it in-band (vLLM answers its token-in
        # endpoint 200, then an error event and [DONE], e.g. a grammar it cannot compile): the
        # stream broke there, as a dropped connection would (the relay reads it: _Events.broke).
        self.failed: str | None = None

    # --- reading events -------------------------------------------------------------
    def take(self, chunk: bytes) -> bytes:
        if self.continuing:
            return b"".join(self._continued(e) for e in chunk.split(b"\n\n") if e.startswith(b"data: {"))
        for event in chunk.split(b"\n\n"):
            at = event.find(b"data: {")
            if at >= 0:
                self._original(event[at + 6:])
        return chunk

    def _original(self, data: bytes) -> None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        kind = obj.get("type", "")
        if isinstance(obj.get("sequence_number"), int):
            self._seq = max(self._seq, obj["sequence_number"])
        if kind == "response.created":
            self._response = obj.get("response")
        elif kind == _ADDED:
            self.items.append(Item(obj.get("output_index", len(self.items)), dict(obj.get("item") or {})))
        elif kind in _DELTAS and self.items:
            self.items[-1].deltas.append(obj.get("delta") or "")
        elif kind == "response.content_part.added" and self.items:
            self.items[-1].content_index = obj.get("content_index", 0)
            self.items[-1].part_added = True
        elif kind in _DONE_GROUP and self.items:
            self.items[-1].sent.add(kind)
        elif kind == _DONE and self.items:
            self.items[-1].done = dict(obj.get("item") or {})
        elif kind in _FINAL:
            self.finish_reason = (obj.get("response") or {}).get("status") or "completed"

    def _continued(self, event: bytes) -> bytes:
        assert self._emitter is not None and self._splice is not None
        if self.failed is not None:
            return b""
        obj = orjson.loads(event[6:])
        err = obj.get("error")
        if isinstance(err, dict) and not obj.get("choices"):
            # Read as an event with no tokens, it ended the client's stream with neither a
            # final event nor an error.
            self.failed = str(err.get("message") or "engine error")
            return b""
        tokens, finish, _, usage = continuation_chunk(obj)
        self._output += tokens
        events = self._emitter.segments(self._splice.segments(tokens, finished=finish is not None))
        if finish is not None:
            self.finish_reason = finish
            events.append(self._emitter.completed(self._response or {}, status=_status(finish, self.items),
                                                  usage=self.usage(), flushed=self._splice.reader.flushed))
        return b"".join(self._sse(e) for e in events)

    def _sse(self, event: dict[str, Any]) -> bytes:
        self._seq += 1
        event = dict(sorted({**event, "sequence_number": self._seq}.items()))  # vLLM's field order
        if "name" in event:
            event["name"] = event.pop("name")
        return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"

    # --- resuming -------------------------------------------------------------------
    @property
    def resumable(self) -> bool:
        if self._splice is not None and self._splice.skipping:
            return False
        last = self.items[-1] if self.items else None
        if last is not None and last.done is not None and last.kind in ("function_call", "message"):
            return False  # its turn ended (<|call|>, <|return|>) before response.completed came
        return self._response is not None and harmony.available() and self.finish_reason is None

    def rendered(self, body: bytes) -> None:
        self._rendered = read_rendered(body)
        if self._rendered is None:
            raise ValueError("the engine's render answer has no token ids and sampling parameters")
        self._prompt = list(self._rendered["token_ids"])
        if not self.continuing:
            self._output, self._restart = _tokens(self.items)

    def continuation(self) -> bytes:
        assert self._rendered is not None
        self._splice = Splice(self._output, self._rendered, restart=self._restart)
        self._restart = None
        limit = self._rendered["sampling_params"].get("max_tokens")
        tools = frozenset(t.get("name") for t in self._data.get("tools") or () if isinstance(t, dict)
                          and t.get("type") == "function")
        self._emitter = Emitter(self.items, tools)
        return generate_body(self._rendered, self._prompt + self._output[:self._splice.cut],
                             max_tokens=None if limit is None else max(1, limit - self._splice.cut),
                             tag=self._splice.tag)

    def resumed(self) -> None:
        assert self._splice is not None
        del self._output[self._splice.cut:]
        self.continuing = True
        self.failed = None
        self.resumes += 1

    def usage(self) -> dict[str, Any]:
        reader = self._splice.reader if self._splice is not None else None
        if reader is None:
            reader = harmony.Reader.of(self._output)
        prompt, output = len(self._prompt), len(self._output)
        return {"input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0,
                                         "input_tokens_per_turn": [prompt], "cached_tokens_per_turn": [0]},
                "output_tokens": output,
                "output_tokens_details": {"reasoning_tokens": reader.reasoning_tokens, "tool_output_tokens": 0,
                                          "output_tokens_per_turn": [output], "tool_output_tokens_per_turn": [0]},
                "total_tokens": prompt + output}

    def epilogue(self, *, include_usage: bool) -> bytes:  # noqa: ARG002 (a Responses stream ends with its usage)
        return b""  # resumable until its final event, which carries everything


def _status(finish: str, items: list[Item]) -> str:
    if not items:
        return "incomplete"
    return "incomplete" if finish == "length" else "completed"


def _tokens(items: list[Item]) -> tuple[list[int], int | None]:
    """The harmony tokens of the output items the client has (the prompt ends with
    ``<|start|>assistant``): finished ones as whole messages, the open one as far as it went;
    and where an open function call's header begins: vLLM's events do not say how the model
    wrote it (the channel, its tokens), so the continuation writes it again."""
    out: list[int] = []
    restart = None
    for n, item in enumerate(items):
        if n:
            out += harmony.ids("<|start|>assistant")
        kind = item.item.get("type")
        if kind == "function_call" and item.done is None:
            restart = len(out)
        if kind == "reasoning":
            out += harmony.ids("<|channel|>analysis<|message|>")
        elif kind == "function_call":
            out += harmony.ids(f"<|channel|>commentary to=functions.{item.item.get('name', '')} <|constrain|>json<|message|>")
        else:  # a message: the answer; one that ended while more came was a preamble
            out += harmony.ids("<|channel|>commentary<|message|>" if item.done else "<|channel|>final<|message|>")
        for delta in item.deltas:
            out += harmony.encoding().encode(delta, allowed_special=set())
        if item.done is not None:
            out += harmony.ids("<|call|>" if kind == "function_call" else "<|end|>")
    return out, restart
