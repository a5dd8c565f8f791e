"""Routing keys from a request body: the prompt's leading text (prefix affinity), the
session (session affinity). Pure functions of the parsed JSON.

The prefix key approximates "the first tokens after the chat template" without a
tokenizer in the gateway: messages are rendered canonically (role markers + text, in
order), which is a prefix-preserving stand-in for any chat template — two requests whose
templated prompts share their first N tokens share their first ~4N characters here.
Anthropic's Messages requests lead with their shared prompt (`system`, `tools`); a Responses
request is its `instructions` and `input` items rendered as turns.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import orjson


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones, mark the others
        return "".join(_part_text(p) for p in content)
    return ""


_TEXT_PARTS = ("text", "input_text", "output_text")  # chat and Anthropic's; Responses' input and output


def _part_text(part: Any) -> str:
    """A text part's text; any other part (or a malformed one) is a marker."""
    if isinstance(part, dict) and part.get("type") in _TEXT_PARTS and isinstance(text := part.get("text"), str):
        return text
    return "\x1f"


def _shared(data: dict[str, Any], fields: Iterable[str]) -> Iterator[tuple[str, str]]:
    """The request's shared prompt before its turns (Anthropic's `system` and `tools`): an
    agent's requests share it, so it leads the key."""
    for name in fields:
        value = data.get(name)
        if name == "tools" and isinstance(value, list) and value:
            yield name, orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        elif value is not None and name != "tools":
            yield name, _text(value)


def _input_turns(data: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """A Responses request as turns: its instructions, then its input (a string is one user
    turn; an item is a message, or its type and its text-like fields)."""
    if isinstance(data.get("instructions"), str):
        yield "system", data["instructions"]
    items = data.get("input")
    if isinstance(items, str):
        yield "user", items
        return
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and "role" in item:
            yield str(item.get("role")), _text(item.get("content"))
        elif isinstance(item, dict):
            yield str(item.get("type", "")), "".join(
                v for k in ("name", "arguments", "output") if isinstance(v := item.get(k), str))


def _render(turns: Iterable[tuple[str, str]], limit: int) -> str:
    out: list[str] = []
    size = 0
    for role, text in turns:
        piece = f"\x1e{role}\x1d{text}"
        out.append(piece)
        size += len(piece)
        if size >= limit:
            break
    return "".join(out)[:limit]


def canonical_prompt(data: dict[str, Any], limit: int, *, preamble: tuple[str, ...] = ()) -> str:
    """The leading ``limit`` characters of the request's prompt in a canonical rendering
    (``preamble``: top-level fields rendered first, e.g. Anthropic's `system` and `tools`)."""
    messages = data.get("messages")
    if isinstance(messages, list):
        turns = ((str(m.get("role", "")), _text(m.get("content"))) for m in messages if isinstance(m, dict))
        return _render(itertools.chain(_shared(data, preamble), turns), limit)
    if "input" in data:
        return _render(_input_turns(data), limit)
    prompt = data.get("prompt")
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt else ""
        if isinstance(prompt, list):  # token ids
            return ",".join(str(t) for t in prompt[: limit // 4])
    return prompt[:limit] if isinstance(prompt, str) else ""


def prefix_key(data: dict[str, Any], chars: int, *, preamble: tuple[str, ...] = ()) -> bytes:
    return canonical_prompt(data, chars, preamble=preamble).encode("utf-8", "surrogatepass")


def session_key(headers: dict[bytes, bytes], data: dict[str, Any]) -> str | None:
    sid = headers.get(b"x-session-id")
    if sid:
        return sid.decode("latin-1")
    user = data.get("user")
    return user if isinstance(user, str) and user else None
