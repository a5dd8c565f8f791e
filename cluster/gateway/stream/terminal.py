"""The name of a Responses stream's final event, as OpenAI's API gives it."""

from __future__ import annotations

import orjson

_COMPLETED = b"event: response.completed\n"
# The final event OpenAI names after the response's status (ResponseIncompleteEvent, ResponseFailedEvent).
_TERMINAL = {"incomplete": b"response.incomplete", "failed": b"response.failed"}


def terminal_named(chunk: bytes) -> bytes:
    """vLLM ends every Responses stream with `response.completed`, whatever its response's
    status; OpenAI's API ends one cut short (`max_output_tokens`) with `response.incomplete`
    and a failed one with `response.failed`, and its SDKs act on the name: the Agents SDK
    raises on `response.incomplete`, as on an unstreamed answer's status, instead of taking
    a cut turn for a finished one. The final event renamed after its status; any other chunk
    unchanged (a completed stream costs one byte search)."""
    at = chunk.rfind(_COMPLETED)
    if at < 0 or (b'"status":"incomplete"' not in chunk and b'"status":"failed"' not in chunk):
        return chunk
    start = chunk.find(b"data:", at)
    end = chunk.find(b"\n\n", start)
    if start < 0 or end < 0:
        return chunk
    try:
        name = _TERMINAL.get(orjson.loads(chunk[start + 5:end])["response"]["status"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return chunk
    if name is None:
        return chunk
    data = chunk[start:end].replace(b'"type":"response.completed"', b'"type":"' + name + b'"', 1)
    return chunk[:at] + b"event: " + name + b"\n" + data + chunk[end:]
