"""The Responses events vLLM 0.32 writes for a harmony turn (its ``StreamingState`` and event
builders for reasoning, output text and function calls), written by the gateway for a
resumed stream's continuation (cluster.gateway.stream.harmony_responses): the same event
kinds, fields and item shapes, the open item continued under its id and `output_index`."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from cluster.gateway.stream import harmony

_ADDED, _DONE = "response.output_item.added", "response.output_item.done"
_PART_ADDED, _PART_DONE = "response.content_part.added", "response.content_part.done"


def _uid() -> str:
    return secrets.token_hex(8)  # vLLM's random_uuid: 16 hex characters


@dataclass
class Item:
    """One output item: its index, the item as added, its deltas' text, and as done."""

    index: int
    item: dict[str, Any]
    deltas: list[str] = field(default_factory=list)
    content_index: int = 0
    part_added: bool = False  # its content_part.added was sent (it follows output_item.added)
    sent: set[str] = field(default_factory=set)  # the done events of it that were sent already
    done: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        return self.item.get("type", "")


class Emitter:
    """Harmony segments to events (``sequence_number`` left to the caller), from the state the
    client's events left: the open item, or the next ``output_index``."""

    def __init__(self, items: list[Item], function_names: frozenset[str]):
        self.items = items
        self._names = function_names
        last = items[-1] if items else None
        self._open = last if last is not None and last.done is None else None
        self._index = last.index + (0 if self._open else 1) if last else 0
        self._content_index = self._open.content_index if self._open and self._open.part_added else -1
        self._added = self._open is not None and self._open.kind in ("reasoning", "message")
        self._called = self._open is not None and self._open.kind == "function_call"
        # the open item's content part, when the stream broke between its two added events
        self._part = self._open.part_added or not self._added if self._open else True

    def segments(self, segments: list[harmony.Segment]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for seg in segments:
            if seg.delta:
                out += self._delta(seg)
            elif seg.done is not None:
                out += self._done(*seg.done)
                self._index += 1
                self._content_index, self._added, self._called, self._open = -1, False, False, None
        return out

    def _item(self, item: dict[str, Any] | None, part: dict[str, Any] | None) -> list[dict[str, Any]]:
        out = []
        if item is not None:
            self._open = Item(self._index, item)
            self.items.append(self._open)
            out.append({"item": item, "output_index": self._index, "type": _ADDED})
        if part is not None:
            self._part = True
            self._open.part_added = True
            self._content_index += 1
            self._open.content_index = self._content_index
            out.append({"content_index": self._content_index, "item_id": self._open.item["id"], "output_index": self._index,
                        "part": part, "type": _PART_ADDED})
        return out

    def _delta(self, seg: harmony.Segment) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if seg.recipient is None and seg.channel in ("final", "commentary"):
            if not self._added:
                self._added = True
                out += self._item({"id": f"msg_{_uid()}", "content": [], "role": "assistant", "status": "in_progress",
                                   "type": "message", "phase": None},
                                  {"annotations": [], "text": "", "type": "output_text", "logprobs": []})
            elif not self._part:
                out += self._item(None, {"annotations": [], "text": "", "type": "output_text", "logprobs": []})
            ev = {"content_index": self._content_index, "delta": seg.delta, "item_id": self._open.item["id"],
                  "logprobs": [], "output_index": self._index, "type": "response.output_text.delta"}
        elif seg.recipient is None and seg.channel == "analysis":
            if not self._added:
                self._added = True
                out += self._item({"id": f"rs_{_uid()}", "summary": [], "type": "reasoning", "content": None,
                                   "encrypted_content": None, "status": "in_progress"},
                                  {"text": "", "type": "reasoning_text"})
            elif not self._part:
                out += self._item(None, {"text": "", "type": "reasoning_text"})
            ev = {"content_index": self._content_index, "delta": seg.delta, "item_id": self._open.item["id"],
                  "output_index": self._index, "type": "response.reasoning_text.delta"}
        elif harmony.is_function(seg.recipient, self._names):
            if not self._called:
                self._called = True
                out += self._item({"arguments": "", "call_id": f"call_{_uid()}", "name": harmony.function_name(seg.recipient),
                                   "type": "function_call", "id": f"fc_{_uid()}", "async": None, "caller": None,
                                   "namespace": None, "status": "in_progress"}, None)
            ev = {"delta": seg.delta, "item_id": self._open.item["id"], "output_index": self._index,
                  "type": "response.function_call_arguments.delta"}
        else:  # built-in tools and MCP: not resumed (cluster.gateway.stream.resume)
            return out
        self._open.deltas.append(seg.delta)
        return out + [ev]

    def _done(self, channel: str | None, recipient: str | None, ctype: str | None, text: str) -> list[dict[str, Any]]:
        item = self._open
        events = self._done_events(channel, recipient, ctype, text)
        return [e for e in events if item is None or e["type"] not in item.sent]  # some went before the break

    def _done_events(self, channel: str | None, recipient: str | None, _ctype: str | None,
                     text: str) -> list[dict[str, Any]]:
        item = self._open
        if item is None or not (self._added or self._called):
            return []  # vLLM sends no done events for an item it never added
        at, iid = {"output_index": self._index, "item_id": item.item["id"]}, item.item["id"]
        if recipient is not None:
            if not harmony.is_function(recipient, self._names):
                return []
            item.done = {**item.item, "arguments": text, "status": "completed", "output_index": self._index,
                         "sequence_number": -1}
            return [{"arguments": text, **at, "type": "response.function_call_arguments.done",
                     "name": item.item.get("name")},
                    {"item": item.done, "output_index": self._index, "type": _DONE}]
        ci = self._content_index
        if channel == "analysis":
            part = {"text": text, "type": "reasoning_text"}
            item.done = {"id": iid, "summary": [], "type": "reasoning", "content": [part], "encrypted_content": None,
                         "status": "completed"}
            return [{"content_index": ci, **at, "text": text, "type": "response.reasoning_text.done"},
                    {"content_index": ci, **at, "part": part, "type": _PART_DONE},
                    {"item": item.done, "output_index": self._index, "type": _DONE}]
        part = {"annotations": [], "text": text, "type": "output_text", "logprobs": None}
        item.done = {"id": iid, "content": [part], "role": "assistant", "status": "completed", "type": "message",
                     "phase": None}
        return [{"content_index": ci, **at, "logprobs": [], "text": text, "type": "response.output_text.done"},
                {"content_index": ci, **at, "part": part, "type": _PART_DONE},
                {"item": item.done, "output_index": self._index, "type": _DONE}]

    def completed(self, response: dict[str, Any], *, status: str, usage: dict[str, Any],
                  flushed: bool = False) -> dict[str, Any]:
        """The final event: the response with every item (as vLLM lists them) and the usage."""
        output = [final_item(it, incomplete=flushed and n == len(self.items) - 1) for n, it in enumerate(self.items)]
        body = {**response, "status": status, "output": output, "usage": usage}
        if status == "incomplete":
            body["incomplete_details"] = {"reason": "max_output_tokens"}
        return {"response": body, "type": "response.completed"}


def final_item(it: Item, *, incomplete: bool = False) -> dict[str, Any]:
    """An item as `response.completed` lists it (vLLM rebuilds them from the messages)."""
    done = it.done or {}
    status = "incomplete" if incomplete or it.done is None else "completed"
    text = "".join(it.deltas)
    if it.kind == "reasoning":
        content = done.get("content") or [{"text": text, "type": "reasoning_text"}]
        return {"id": it.item["id"], "summary": [], "type": "reasoning", "content": content,
                "encrypted_content": None, "status": None}
    if it.kind == "function_call":
        return {"arguments": done.get("arguments", text), "call_id": it.item.get("call_id"), "name": it.item.get("name"),
                "type": "function_call", "id": it.item["id"], "async": None, "caller": None, "namespace": None,
                "status": status}
    content = done.get("content") or [{"annotations": [], "text": text, "type": "output_text", "logprobs": None}]
    return {"id": it.item["id"], "content": content, "role": "assistant", "status": status, "type": "message",
            "phase": None}
