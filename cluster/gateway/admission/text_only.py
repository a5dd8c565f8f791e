"""Content a text-only model cannot read: an image, audio, a video, a file or a document sent
to a harmony (gpt-oss) model. vLLM's harmony path keeps only the text of each message (chat and
Messages: the parts' ``text``; Responses: an ``input_image`` becomes empty text), so the request
would be answered as if the part had not been sent. OpenAI answers a text-only model's image
with a 400 (``Invalid content type. image_url is only supported by certain models.``); so does
the gateway, on every route, before the engine.

One exception: media inside a Messages ``tool_result`` (an agent's tool read a screenshot or a
PDF) is replaced by a text note that says so, which the model reads. The block is sent again
with every later turn of the session, so a 400 there would end the agent's session for good.
The same for a Responses ``function_call_output`` whose output is a list of parts (OpenAI's
input_text, input_image, input_file): vLLM's harmony path takes a string there and fails a
list, so the parts become one text, media as the note.

The media part types are listed (a blocklist): any other part (text, refusal, thinking, tool
bookkeeping, a vLLM extension) goes to the engine as before. Pure: the request's JSON in, the
error (or None) out; ``note_tool_media`` edits the request in place."""

from __future__ import annotations

from typing import Any

from cluster.gateway.context import CHAT, COUNT_TOKENS, MESSAGES, RESPONSES
from cluster.gateway.errors import OpenAIError

# The part types of each route that carry media (OpenAI's, vLLM's extensions, Anthropic's).
MEDIA_PARTS = {
    CHAT: frozenset({"image_url", "input_audio", "audio_url", "video_url", "file", "image_embeds", "audio_embeds",
                     "image_pil", "input_image", "input_file"}),
    RESPONSES: frozenset({"input_image", "input_file", "input_audio"}),
    MESSAGES: frozenset({"image", "document"}),
}
MEDIA_PARTS[COUNT_TOKENS] = MEDIA_PARTS[MESSAGES]


def non_text_content(route: str, data: dict[str, Any], model: str) -> OpenAIError | None:
    """The 400 for the first media part of ``data``'s turns, else None (other routes: None)."""
    media = MEDIA_PARTS.get(route)
    if media is None:
        return None
    key = "input" if route == RESPONSES else "messages"
    turns = data.get(key)
    if not isinstance(turns, list):
        return None
    for i, turn in enumerate(turns):
        content = turn.get("content") if isinstance(turn, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in media:
                return OpenAIError(
                    400, f"Invalid content type. {kind} is not supported by '{model}', a text-only model: "
                    "send text only", param=f"{key}[{i}].content[{j}].type", code="unsupported_content")
    return None


def _omitted(kind: str, model: str) -> str:
    """The note that stands for a media part the model cannot read."""
    return f"[{kind} omitted: {model} reads text only]"


def note_tool_media(route: str, data: dict[str, Any], model: str) -> bool:
    """Replace, in place, each media block inside a Messages ``tool_result`` by a text note the
    model reads (Responses: each function call output's parts by their text); True when one was
    (the engine's body must be re-serialised)."""
    if route == RESPONSES:
        return _outputs_as_text(data, model)
    if route not in (MESSAGES, COUNT_TOKENS) or not isinstance(data.get("messages"), list):
        return False
    noted = False
    for turn in data["messages"]:
        content = turn.get("content") if isinstance(turn, dict) else None
        for part in content if isinstance(content, list) else ():
            inner = part.get("content") if isinstance(part, dict) and part.get("type") == "tool_result" else None
            if not isinstance(inner, list):
                continue
            for k, block in enumerate(inner):
                kind = block.get("type") if isinstance(block, dict) else None
                if kind in MEDIA_PARTS[MESSAGES]:
                    inner[k] = {"type": "text", "text": _omitted(kind, model)}
                    noted = True
    return noted


_OUTPUT_TEXT = frozenset({"input_text", "output_text", "text"})


def _outputs_as_text(data: dict[str, Any], model: str) -> bool:
    """Each ``function_call_output`` (or custom tool's) whose output is a list of parts, as one
    text: the parts' texts and, for media, the note, a line each. A list with a part of another
    kind is left as sent (the engine answers it)."""
    items = data.get("input")
    noted = False
    for item in items if isinstance(items, list) else ():
        output = item.get("output") if isinstance(item, dict) and \
            item.get("type") in ("function_call_output", "custom_tool_call_output") else None
        if not isinstance(output, list):
            continue
        kinds = [p.get("type") if isinstance(p, dict) else None for p in output]
        if not all(k in _OUTPUT_TEXT or k in MEDIA_PARTS[RESPONSES] for k in kinds):
            continue
        item["output"] = "\n".join(str(p.get("text") or "") if k in _OUTPUT_TEXT else
                                   _omitted(k, model) for p, k in zip(output, kinds))
        noted = True
    return noted
