"""A stream's final events, read and written: the usage of a chat or completions stream's
last `"choices":[]` event (stripped when the gateway, not the client, asked for it), the usage
in a Responses stream's final event, and the error event that ends a broken Responses stream
(cluster.gateway.stream.relay relays the rest unparsed)."""

from __future__ import annotations

import orjson

from cluster.gateway.context import Delivery
from cluster.gateway.errors import OpenAIError
from cluster.gateway.stream.terminal import FinalEvent

# The Responses stream's last event (completed, incomplete or failed) carries the whole
# response, usage included. An event line ends with a raw newline, which JSON text cannot
# hold: a model's output never matches these.
_FINAL_EVENTS = (b"event: response.completed\n", b"event: response.incomplete\n", b"event: response.failed\n")


def take_usage(chunk: bytes, delivery: Delivery, *, strip: bool) -> tuple[bytes, bool]:
    """Read the usage of the final `"choices":[]` event; drop that event when the gateway,
    not the client, asked for it (``strip``). Also says whether token events precede it in
    the chunk."""
    at = chunk.find(b'"choices":[]')
    start = chunk.rfind(b"data:", 0, at)
    end = chunk.find(b"\n\n", at)
    if start < 0 or end < 0:
        return chunk, True
    end += 2
    try:
        delivery.usage(orjson.loads(chunk[start + 5:end]).get("usage"))
    except (orjson.JSONDecodeError, AttributeError):
        return chunk, True
    return (chunk[:start] + chunk[end:] if strip else chunk), start > 0


def take_response_usage(chunk: bytes, delivery: Delivery) -> FinalEvent | None:
    """Read the usage of a Responses stream's final event (``response.usage``) when the
    chunk holds it; the event as found (None: no final event here). It is not changed."""
    for marker in _FINAL_EVENTS:
        at = chunk.rfind(marker)
        if at >= 0:
            break
    else:
        return None
    start = chunk.find(b"data:", at)
    end = chunk.find(b"\n\n", start)
    if start < 0 or end < 0:
        return None
    try:
        response = orjson.loads(chunk[start + 5:end]).get("response")
        delivery.usage(response.get("usage"))
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return FinalEvent(at, start, end, response)


def responses_error_event(err: OpenAIError, *, after: bytes = b"") -> bytes:
    """A broken Responses stream's end: the spec's `error` event (type, code, message, param,
    the sequence number after the last event relayed, ``after``), with the OpenAI error object
    beside them, on which the OpenAI SDK raises."""
    at = after.rfind(SEQUENCE)
    digits = after[at + len(SEQUENCE):].lstrip()[:20] if at >= 0 else b""
    n = len(digits) - len(digits.lstrip(b"0123456789"))
    event = {"type": "error", "code": err.code, "message": err.message, "param": err.param,
             "sequence_number": int(digits[:n]) + 1 if n else 0, **err.body()}
    return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


SEQUENCE = b'"sequence_number":'
