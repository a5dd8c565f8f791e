"""Anthropic's Messages stream as the relay reads it (vLLM 0.32 writes named SSE events:
``message_start``, ``content_block_start|delta|stop``, ``message_delta``, ``message_stop``,
``ping``, ``error``). Events are relayed whole and in order, their bytes untouched, except:

- the usage is read on the way (``message_start``: the input tokens; ``message_delta``: the
  output tokens, and the input tokens again);
- with the reasoning policy ``strip``, ``thinking`` / ``redacted_thinking`` blocks are left out
  (their start, deltas and stop) and the later blocks' ``index`` renumbered, so the stream is
  as valid for the SDK's accumulator as one without thinking; a whole answer loses those blocks;
- an ``error`` event of the engine's (vLLM names its type ``internal_error``) gets Anthropic's
  canonical type (cluster.gateway.anthropic.errors).
"""

from __future__ import annotations

from typing import Any

import orjson

from cluster.gateway.anthropic.errors import canonical_stream_error
from cluster.gateway.context import Delivery

THINKING = ("thinking", "redacted_thinking")
_READ = (b"event: message_start\n", b"event: message_delta\n", b"event: error\n")
TOKEN_EVENT = b"event: content_block_delta\n"


def strip_thinking_body(body: bytes) -> bytes:
    """A whole Messages answer without its thinking blocks; anything else unchanged."""
    if b'"thinking' not in body:
        return body
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(data, dict) or not isinstance(data.get("content"), list):
        return body
    data["content"] = [b for b in data["content"] if not (isinstance(b, dict) and b.get("type") in THINKING)]
    return orjson.dumps(data)


def _parse(event: bytes) -> tuple[bytes, dict[str, Any] | None]:
    """(event name, its data object) of one whole SSE event."""
    name, data = b"", None
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            name = line[6:].strip()
        elif line.startswith(b"data:"):
            try:
                data = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                data = None
    return name, data if isinstance(data, dict) else None


def _event(name: bytes, data: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessagesStream:
    """One Messages stream's reader; ``chunk`` takes whole SSE events (the relay hands over
    nothing else) and returns (what to send on, whether it holds token events)."""

    def __init__(self, *, strip_thinking: bool):
        self._strip = strip_thinking
        self._hidden: list[int] = []  # the engine's indexes of the thinking blocks left out

    def chunk(self, chunk: bytes, delivery: Delivery) -> tuple[bytes, bool]:
        tokens = TOKEN_EVENT in chunk
        if not self._strip and not any(marker in chunk for marker in _READ):
            return chunk, tokens
        out = [e for e in (self._take(e + b"\n\n", delivery) for e in chunk.split(b"\n\n") if e) if e]
        return b"".join(out), tokens

    def _take(self, event: bytes, delivery: Delivery) -> bytes:
        name, data = _parse(event)
        if data is None:
            return event
        if name == b"message_start":
            # Only its input tokens: its output_tokens (0, nothing generated yet) is no usage. A
            # stream cut before message_delta is charged one token per token event relayed, as a
            # chat stream cut short is (cluster.tenancy.charging.charge), not 0.
            message = data.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                delivery.usage({"input_tokens": usage.get("input_tokens")})
        elif name == b"message_delta":
            prompt = delivery.prompt_tokens
            delivery.usage(data.get("usage"))
            if delivery.prompt_tokens is None:  # a message_delta may leave the input tokens out
                delivery.prompt_tokens = prompt
        elif name == b"error":
            fixed = canonical_stream_error(data)
            return event if fixed is data else _event(name, fixed)
        if not self._strip or not isinstance(index := data.get("index"), int):
            return event
        block = data.get("content_block")
        if name == b"content_block_start" and isinstance(block, dict) and block.get("type") in THINKING:
            self._hidden.append(index)
            return b""
        if index in self._hidden:
            return b""
        shift = sum(1 for h in self._hidden if h < index)
        return _event(name, {**data, "index": index - shift}) if shift else event
