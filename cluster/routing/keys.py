"""Routing keys from a request body: the prompt's leading text (prefix affinity), the
session (session affinity). Pure functions of the parsed JSON.

The prefix key approximates "the first tokens after the chat template" without a
tokenizer in the gateway: messages are rendered canonically (role markers + text, in
order), which is a prefix-preserving stand-in for any chat template — two requests whose
templated prompts share their first N tokens share their first ~4N characters here.
"""

from __future__ import annotations

from typing import Any


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones, mark the others
        return "".join(_part_text(p) for p in content)
    return ""


def _part_text(part: Any) -> str:
    """A text part's text; any other part (or a malformed one) is a marker."""
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(text := part.get("text"), str):
        return text
    return "\x1f"


def canonical_prompt(data: dict[str, Any], limit: int) -> str:
    """The leading ``limit`` characters of the request's prompt in a canonical rendering."""
    messages = data.get("messages")
    if isinstance(messages, list):
        out: list[str] = []
        size = 0
        for m in messages:
            if not isinstance(m, dict):
                continue
            piece = f"\x1e{m.get('role', '')}\x1d{_text(m.get('content'))}"
            out.append(piece)
            size += len(piece)
            if size >= limit:
                break
        return "".join(out)[:limit]
    prompt = data.get("prompt")
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt else ""
        if isinstance(prompt, list):  # token ids
            return ",".join(str(t) for t in prompt[: limit // 4])
    return prompt[:limit] if isinstance(prompt, str) else ""


def prefix_key(data: dict[str, Any], chars: int) -> bytes:
    return canonical_prompt(data, chars).encode("utf-8", "surrogatepass")


def session_key(headers: dict[bytes, bytes], data: dict[str, Any]) -> str | None:
    sid = headers.get(b"x-session-id")
    if sid:
        return sid.decode("latin-1")
    user = data.get("user")
    return user if isinstance(user, str) and user else None
