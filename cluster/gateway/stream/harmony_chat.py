"""Stream resume for gpt-oss chat (harmony, vLLM's `openai_gptoss` reasoning parser and
`openai` tool parser): reasoning, content and tool-call deltas.

As for plain chat (cluster.gateway.stream.resume), the engine streams the token ids of what
it writes (`return_token_ids`, stripped before the client; the events vLLM sends only for
those ids, with nothing else in them, are dropped so the client reads vLLM's usual stream).
Every token the engine sent is the turn's output so far: harmony's parser holds back half
a character, not the token. When the engine dies, the continuation generates after the
prompt and those tokens (cluster.gateway.stream.splice): a `/v1/completions` stream, or,
when the request may be constrained by a grammar (tool_choice required or named, a strict
tool, response_format, structured_outputs), vLLM's render then its token-in endpoint
under what is left of the grammar. Its tokens are parsed as vLLM parses them and written
as vLLM writes chat deltas: `reasoning`, `content`, `tool_calls` (a new call gets its id,
name and index; arguments follow), the finish reason (`tool_calls` after a call unless the
tool was named), the usage of the whole request with its reasoning tokens."""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from cluster.gateway.context import CHAT, COMPLETIONS
from cluster.gateway.stream import harmony
from cluster.gateway.stream.resume import context_length, context_request
from cluster.gateway.stream.splice import (GENERATE, Splice, continuation_chunk, generate_body, harmony_prompt,
                                           read_rendered)

RENDER = CHAT + "/render"
# Sampling parameters a /v1/completions continuation keeps (no grammar: nothing else differs).
_CARRIED = ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty",
            "repetition_penalty", "logit_bias", "stop_token_ids", "priority", "cache_salt")


def constrained(data: dict[str, Any]) -> bool:
    """vLLM may compile this request into a grammar (a structural tag over the output), as it
    does with its default `--tool-strict-level`."""
    tools, choice = data.get("tools") or [], data.get("tool_choice")
    if tools and choice != "none":
        strict = any(isinstance(t, dict) and (t.get("function") or {}).get("strict") for t in tools)
        if strict or choice not in (None, "auto"):
            return True
    fmt = data.get("response_format")
    return bool(data.get("structured_outputs")) or (isinstance(fmt, dict) and fmt.get("type") not in (None, "text"))


class HarmonyChatLedger:
    """What one gpt-oss chat stream delivered, and its continuation's events in its shape."""

    route = CHAT

    def __init__(self, data: dict[str, Any], *, max_model_len: int | None = None):
        self._data = data
        self._max_model_len = max_model_len
        self.prompt_ids: list[int] | None = None
        self.output: list[int] = []  # the turn's tokens, as the engine now answering has them
        self.finish_reason: str | None = None
        self.resumes = 0
        self.continuing = False
        self._meta: dict[str, Any] | None = None
        self._rendered: dict[str, Any] | None = None
        self._splice: Splice | None = None
        self._tools_streamed = False
        self._next_tool = 0
        named = isinstance(data.get("tool_choice"), dict)
        self._tool_finish = not named
        self._constrained = constrained(data)
        self.failed: str | None = None  # never set: an engine error event here is relayed as it is (not resumed)

    # --- reading events -------------------------------------------------------------
    def take(self, chunk: bytes) -> bytes:
        out = []
        for event in chunk.split(b"\n\n"):
            if not event:
                continue
            if not event.startswith(b"data: {"):
                out.append(event + b"\n\n")
                continue
            try:
                obj = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                out.append(event + b"\n\n")
                continue
            obj = self._continued(obj) if self.continuing else self._original(obj)
            if obj is not None:
                out.append(b"data: " + orjson.dumps(obj) + b"\n\n")
        return b"".join(out)

    def _original(self, obj: dict) -> dict | None:
        if self._meta is None and "id" in obj:
            self._meta = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
        ids = obj.pop("prompt_token_ids", None)
        obj.pop("prompt_text", None)
        if ids is not None and self.prompt_ids is None:
            self.prompt_ids = list(ids)
        empty = not obj.get("usage")
        for choice in obj.get("choices") or ():
            self.output += choice.pop("token_ids", None) or []
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            delta = choice.get("delta") or {}
            self._tools_streamed = self._tools_streamed or bool(delta.get("tool_calls"))
            empty = empty and not delta and choice.get("finish_reason") is None and not choice.get("logprobs")
        # An event sent only for its token ids (a header token, half a character): vLLM
        # sends none without return_token_ids.
        return None if empty and obj.get("choices") else obj

    def _continued(self, obj: dict) -> dict | None:
        assert self._splice is not None
        tokens, finish, stop, usage = continuation_chunk(obj)
        if usage is not None and not obj.get("choices"):
            end = {**(self._meta or {}), "choices": [], "usage": self.usage()}
            if obj.get("system_fingerprint"):  # /v1/completions has it, the token-in endpoint not
                end["system_fingerprint"] = obj["system_fingerprint"]
            return end
        self.output += tokens
        prev = self._splice.reader.recipient
        delta = self._delta(self._splice.segments(tokens, finished=finish is not None), prev, finished=finish is not None)
        if finish is None and delta is None:
            return None
        choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": None}
        if finish is not None:
            self.finish_reason = finish
            choice["finish_reason"] = "tool_calls" if finish == "stop" and self._tools_streamed and self._tool_finish \
                else finish
            choice["stop_reason"] = stop
        return {**(self._meta or {}), "choices": [choice]}

    def _delta(self, segments: list[harmony.Segment], prev: str | None, *, finished: bool) -> dict | None:
        """vLLM's chat delta for these segments (HarmonyParser.parse_delta)."""
        content = reasoning = ""
        calls: list[dict[str, Any]] = []
        for seg in segments:
            if seg.done is not None:
                prev = None
                continue
            if seg.recipient and harmony.is_function(seg.recipient):
                if prev != seg.recipient:
                    calls.append({"id": f"chatcmpl-tool-{secrets.token_hex(8)}", "type": "function",
                                  "index": self._next_tool,
                                  "function": {"name": harmony.function_name(seg.recipient), "arguments": seg.delta}})
                    self._next_tool += 1
                    self._tools_streamed = True
                    prev = seg.recipient
                elif seg.delta:
                    if calls:
                        calls[-1]["function"]["arguments"] += seg.delta
                    else:
                        calls.append({"index": self._next_tool - 1, "function": {"arguments": seg.delta}})
            elif seg.channel == "analysis":
                reasoning += seg.delta
            elif seg.channel == "final" or (seg.channel == "commentary" and seg.recipient is None):
                content += seg.delta
        if finished:
            self._next_tool = 0
        delta = {k: v for k, v in (("content", content), ("reasoning", reasoning), ("tool_calls", calls)) if v}
        return delta or None

    # --- resuming -------------------------------------------------------------------
    @property
    def resumable(self) -> bool:
        if self._splice is not None and self._splice.skipping:
            return False  # broke again before the client's text was written again
        return harmony_prompt(self.prompt_ids) and self._meta is not None and self.remaining() != 0 \
            and harmony.available()

    def remaining(self) -> int | None:
        limit = self._data.get("max_completion_tokens") or self._data.get("max_tokens")
        if limit is None:
            if self._max_model_len is None or self.prompt_ids is None:
                return None
            limit = self._max_model_len - len(self.prompt_ids)
        return max(0, limit - len(self.output))

    @property
    def render(self) -> tuple[str, bytes] | None:
        """What to ask the replica that continues first: vLLM's render of the request (its
        grammar) where one may constrain it, else the context length where nothing bounds
        the output (/v1/completions' own default is 16 tokens)."""
        if self._constrained:
            return RENDER, orjson.dumps(self._data)
        return context_request(self._data.get("model")) if self.remaining() is None else None

    @property
    def continuation_route(self) -> str:
        return GENERATE if self._rendered is not None else COMPLETIONS

    def rendered(self, body: bytes) -> None:
        if not self._constrained:
            self._max_model_len = context_length(body)
            return
        self._rendered = read_rendered(body)
        if self._rendered is None:
            raise ValueError("the engine's render answer has no token ids and sampling parameters")

    def continuation(self) -> bytes:
        assert self.prompt_ids is not None
        self._splice = Splice(self.output, self._rendered)
        cut = self._splice.cut
        self._next_tool = 0
        self._delta(self._splice.before, None, finished=False)  # the calls the client has
        left = self.remaining()
        left = None if left is None else left + len(self.output) - cut  # the cut-off tokens come again
        if self._rendered is not None:
            limit = self._rendered["sampling_params"].get("max_tokens")  # vLLM's bound for the whole turn
            left = left if limit is None else limit - cut
            return generate_body(self._rendered, self.prompt_ids + self.output[:cut], max_tokens=left,
                                 tag=self._splice.tag)
        body: dict[str, Any] = {"model": self._data.get("model"), "prompt": self.prompt_ids + self.output[:cut],
                                "stream": True, "stream_options": {"include_usage": True}, "return_token_ids": True}
        body.update({k: self._data[k] for k in _CARRIED if self._data.get(k) is not None})
        body["max_tokens"] = left  # None: up to the context (/v1/completions' own default is 16)
        return orjson.dumps(body)

    def resumed(self) -> None:
        assert self._splice is not None
        del self.output[self._splice.cut:]
        self.continuing = True
        self.resumes += 1

    def usage(self) -> dict[str, Any]:
        """The whole request's usage, its reasoning tokens counted as vLLM counts them."""
        reader = self._splice.reader if self._splice is not None else None
        if reader is None:
            reader = harmony.Reader.of(self.output)
        prompt, completion = len(self.prompt_ids or ()), len(self.output)
        return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
                "completion_tokens_details": {"reasoning_tokens": reader.reasoning_tokens}}

    def epilogue(self, *, include_usage: bool) -> bytes:
        end = b""
        if include_usage:
            end += b"data: " + orjson.dumps({**(self._meta or {}), "choices": [], "usage": self.usage()}) + b"\n\n"
        return end + b"data: [DONE]\n\n"
