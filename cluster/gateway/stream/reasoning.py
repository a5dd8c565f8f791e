"""Reasoning exposure as a policy: with `strip`, the model still reasons (and the usage still
counts its reasoning tokens) but no reasoning reaches the client.

Pure functions over the engine's answers as vLLM 0.32 writes them:
- chat: `message.reasoning` / `message.reasoning_content` of each choice; streamed, the
  `delta.reasoning` / `delta.reasoning_content` fields (an event left with nothing to say is
  dropped);
- responses: the `reasoning` output items (in the response object of a whole answer, of a
  retrieval, and of the stream's `response.*` events) and every stream event of such an item
  (`output_item.added/done`, `content_part.*`, `reasoning_text.*`, `reasoning_summary_*`), the
  remaining events' `output_index` and `sequence_number` renumbered so the stream is as valid
  for the SDK's parser as one without reasoning.

Streams are filtered on whole SSE events (the relay hands over whole events only); a stream
needs a ``ResponsesStripper`` (it carries the renumbering) or ``strip_chat_events``.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

Exposure = Literal["expose", "strip"]
CHAT_FIELDS = ("reasoning", "reasoning_content")
_REASONING_EVENT_PREFIXES = ("response.reasoning",)


def exposure(config, model: str, tenant: str) -> Exposure:
    """The policy for ``tenant`` on ``model``: the tenant's override, else the model's."""
    t = config.gateway.tenants.get(tenant)
    if t is not None and t.reasoning is not None:
        return t.reasoning.expose
    return config.models[model].reasoning.expose


# --- chat ------------------------------------------------------------------------------------

def _strip_fields(obj: Any) -> bool:
    """Remove the reasoning fields of a message or delta in place; True when one was there."""
    if not isinstance(obj, dict):
        return False
    found = False
    for f in CHAT_FIELDS:
        if f in obj:
            del obj[f]
            found = True
    return found


def strip_chat_body(body: dict) -> dict:
    """A chat completion without reasoning (in place; returned)."""
    for choice in body.get("choices") or ():
        if isinstance(choice, dict):
            _strip_fields(choice.get("message"))
    return body


def strip_chat_event(data: dict) -> dict | None:
    """One chat stream chunk without reasoning; None when nothing is left to send (every
    choice's delta emptied by the strip, no finish reason, no usage)."""
    emptied = False
    for choice in data.get("choices") or ():
        if isinstance(choice, dict) and _strip_fields(choice.get("delta")):
            emptied = True
    if not emptied or data.get("usage"):
        return data
    for choice in data["choices"]:
        if choice.get("delta") or choice.get("finish_reason") is not None or choice.get("logprobs"):
            return data
    return None


def strip_chat_events(chunk: bytes) -> bytes:
    """Whole chat SSE events without reasoning (`data: [DONE]` and others unchanged)."""
    if b'"reasoning' not in chunk:
        return chunk
    out = []
    for event in split_events(chunk):
        if not event.startswith(b"data: {") or b'"reasoning' not in event:
            out.append(event)
            continue
        kept = strip_chat_event(orjson.loads(event[6:]))
        if kept is not None:
            out.append(b"data: " + orjson.dumps(kept) + b"\n\n")
    return b"".join(out)


# --- responses -------------------------------------------------------------------------------

def strip_response(response: Any) -> Any:
    """A response object without reasoning output items (in place; returned)."""
    if isinstance(response, dict) and isinstance(response.get("output"), list):
        response["output"] = [i for i in response["output"] if not _is_reasoning_item(i)]
    return response


def _is_reasoning_item(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") == "reasoning"


class ResponsesStripper:
    """One Responses stream's filter: drops the reasoning items' events, renumbers the rest."""

    def __init__(self) -> None:
        self._dropped: list[int] = []  # output indexes of reasoning items, ascending
        self._seq = 0

    def event(self, data: dict) -> dict | None:
        """The event to send instead of ``data`` (changed in place), or None to drop it."""
        etype = data.get("type", "")
        index = data.get("output_index")
        if etype == "response.output_item.added" and _is_reasoning_item(data.get("item")):
            if isinstance(index, int) and index not in self._dropped:
                self._dropped.append(index)
                self._dropped.sort()
            return None
        if etype.startswith(_REASONING_EVENT_PREFIXES) or _is_reasoning_item(data.get("item")) \
                or (isinstance(index, int) and index in self._dropped) \
                or (isinstance(data.get("part"), dict) and str(data["part"].get("type", "")).startswith("reasoning")):
            return None
        if isinstance(index, int):
            data["output_index"] = index - sum(1 for d in self._dropped if d < index)
        if "sequence_number" in data:
            data["sequence_number"] = self._seq
            self._seq += 1
        if "response" in data:
            strip_response(data["response"])
        return data

    def events(self, chunk: bytes) -> bytes:
        """Whole SSE events (``event: T\\ndata: {...}\\n\\n``) filtered."""
        out = []
        for event in split_events(chunk):
            at = event.find(b"data: ")
            if at < 0:
                out.append(event)
                continue
            try:
                data = orjson.loads(event[at + 6:])
            except orjson.JSONDecodeError:
                out.append(event)
                continue
            if not isinstance(data, dict):
                out.append(event)
                continue
            kept = self.event(data)
            if kept is not None:
                out.append(event[:at] + b"data: " + orjson.dumps(kept) + b"\n\n")
        return b"".join(out)


# --- shared ----------------------------------------------------------------------------------

def split_events(chunk: bytes) -> list[bytes]:
    """Whole SSE events, each with its blank-line end."""
    return [e + b"\n\n" for e in chunk.split(b"\n\n") if e]


def strip_body(route: str, body: bytes) -> bytes:
    """A whole JSON answer (chat completion, response object) without reasoning; anything
    else (completions, errors, what does not parse) unchanged."""
    if b'"reasoning' not in body:
        return body
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(data, dict):
        return body
    if route.startswith("/v1/responses"):
        strip_response(data)
    elif route == "/v1/chat/completions":
        strip_chat_body(data)
    else:
        return body
    return orjson.dumps(data)


class StreamStrip:
    """The relay's hook: ``chunk(bytes) -> bytes`` for one stream of ``route``."""

    def __init__(self, route: str) -> None:
        self._responses = ResponsesStripper() if route.startswith("/v1/responses") else None

    def chunk(self, chunk: bytes) -> bytes:
        if self._responses is not None:
            return self._responses.events(chunk)
        return strip_chat_events(chunk)
