"""Content a text-only model cannot read: an image, audio, a file or a document sent to a
harmony (gpt-oss) model. vLLM's harmony path keeps only the text of each message (chat and
Messages: the parts' ``text``; Responses: an ``input_image`` becomes empty text), so the
request would be answered as if the part had not been sent. OpenAI answers a text-only model's
image with a 400 (``Invalid content type. image_url is only supported by certain models.``);
so does the gateway, on every route, before the engine. Pure: the request's JSON in, the
error (or None) out."""

from __future__ import annotations

from typing import Any

from cluster.gateway.context import CHAT, COUNT_TOKENS, MESSAGES, RESPONSES
from cluster.gateway.errors import OpenAIError

# The part types each route's text is made of; any other part is content the model cannot read.
TEXT_PARTS = {
    CHAT: frozenset({"text", "refusal"}),
    RESPONSES: frozenset({"input_text", "output_text", "text", "refusal", "summary_text", "reasoning_text"}),
    # tool_use and thinking blocks are the model's own turns; a tool_result's content is checked inside
    MESSAGES: frozenset({"text", "tool_use", "tool_result", "thinking", "redacted_thinking"}),
}
TEXT_PARTS[COUNT_TOKENS] = TEXT_PARTS[MESSAGES]


def non_text_content(route: str, data: dict[str, Any], model: str) -> OpenAIError | None:
    """The 400 for the first part of ``data`` that is not text, else None (other routes: None)."""
    allowed = TEXT_PARTS.get(route)
    if allowed is None:
        return None
    if route == RESPONSES:
        turns, key = data.get("input"), "input"
    else:
        turns, key = data.get("messages"), "messages"
    if not isinstance(turns, list):
        return None
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            continue
        found = _first_other(turn.get("content"), allowed)
        if found is not None:
            j, kind = found
            return OpenAIError(
                400, f"Invalid content type. {kind} is not supported by '{model}', a text-only model: "
                "send text only", param=f"{key}[{i}].content[{j}].type", code="unsupported_content")
    return None


def _first_other(content: Any, allowed: frozenset[str]) -> tuple[int, str] | None:
    """(index, type) of the first part of ``content`` that is not text; a string is text."""
    if not isinstance(content, list):
        return None
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if isinstance(kind, str) and kind not in allowed:
            return j, kind
        if kind == "tool_result" and (inner := _first_other(part.get("content"), allowed)) is not None:
            return j, f"{inner[1]} in a tool_result"
    return None
