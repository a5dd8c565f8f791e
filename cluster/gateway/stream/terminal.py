"""The name of a Responses stream's final event, as OpenAI's API gives it."""

from __future__ import annotations

from typing import Any, NamedTuple

_COMPLETED = b"event: response.completed\n"
# The final event OpenAI names after the response's status (ResponseIncompleteEvent, ResponseFailedEvent).
_TERMINAL = {"incomplete": b"response.incomplete", "failed": b"response.failed"}


class FinalEvent(NamedTuple):
    """A Responses stream's final event in a chunk, as the relay found and read it
    (cluster.gateway.stream.final_events.take_response_usage)."""

    at: int  # where its `event:` line begins
    start: int  # its `data:` line
    end: int  # the blank line that ends it
    response: dict[str, Any]


def terminal_named(chunk: bytes, final: FinalEvent) -> bytes:
    """vLLM ends every Responses stream with `response.completed`, whatever its response's
    status; OpenAI's API ends one cut short (`max_output_tokens`) with `response.incomplete`
    and a failed one with `response.failed`, and its SDKs act on the name: the Agents SDK
    raises on `response.incomplete`, as on an unstreamed answer's status, instead of taking
    a cut turn for a finished one. The final event renamed after its status (read once, by
    the relay); any other chunk unchanged."""
    name = _TERMINAL.get(final.response.get("status"))
    if name is None or not chunk.startswith(_COMPLETED, final.at):
        return chunk
    data = chunk[final.start:final.end].replace(b'"type":"response.completed"', b'"type":"' + name + b'"', 1)
    return chunk[:final.at] + b"event: " + name + b"\n" + data + chunk[final.end:]
