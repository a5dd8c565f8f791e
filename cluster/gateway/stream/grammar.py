"""What is left of a structural tag once part of the output is written: the grammar a
continuation generates under, so that a resumed stream stays inside the constraint of the
original (vLLM compiles `tool_choice` required or named, strict tools and `response_format`
of gpt-oss into an xgrammar structural tag over the whole harmony output; a continuation
that starts in the middle must not start that grammar again).

The tag is walked over the output's bytes, every way the output can match it (``or`` and
``optional`` branch): each way leaves a stack of formats still to match, and the remainder
is their ``or``. A tag whose begin was written stays as its content and end (a ``tag`` with
an empty begin); free text (``any_text``) is matched up to its end string. Inside JSON
(``json_schema`` content) no remainder can be written as a structural tag: the
continuation then starts at that content's beginning (``cut``), and the relay drops the
part the client already has (cluster.gateway.stream.harmony_chat / harmony_responses)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

Stack = tuple[dict[str, Any], ...]
_CONTENT = "_content"  # a tag whose begin was matched: its content, then its end


class Unsupported(ValueError):
    """The tag (or the output against it) has no remainder this module can write."""


def remainder(tag: str, done: list[bytes]) -> tuple[str | None, int]:
    """(the structural tag for what follows, how many tokens of ``done`` it follows): ``tag``
    as vLLM's sampling parameters carry it (JSON), ``done`` the output so far, one bytes per
    token. None when nothing may follow but the end of the output."""
    root = json.loads(tag)
    if not isinstance(root, dict) or root.get("type") != "structural_tag":
        raise Unsupported("not a structural tag with a format")
    ends = [0]
    for b in done:
        ends.append(ends[-1] + len(b))
    text = b"".join(done)
    cut = len(done)
    while True:
        rewinds: list[int] = []
        stacks = _unique(_consume((root["format"],), text[:ends[cut]], 0, rewinds))
        if not rewinds:
            break
        at = min(rewinds)
        cut = max(i for i, e in enumerate(ends) if e <= at)
    if not stacks:
        raise Unsupported("the output does not match the tag")
    alts = [_sequence(s) for s in stacks]
    fmt = alts[0] if len(alts) == 1 else {"type": "or", "elements": alts}
    return json.dumps({"type": "structural_tag", "format": fmt}), cut


def _unique(stacks: Iterator[Stack]) -> list[Stack]:
    seen: dict[str, Stack] = {}
    for s in stacks:
        seen.setdefault(json.dumps(s, sort_keys=True), s)
    return list(seen.values())


def _sequence(stack: Stack) -> dict[str, Any]:
    elements = [_real(f) for f in stack]
    if not elements:
        return {"type": "const_string", "value": ""}
    return elements[0] if len(elements) == 1 else {"type": "sequence", "elements": elements}


def _real(fmt: dict[str, Any]) -> dict[str, Any]:
    if fmt.get("type") == _CONTENT:
        return {"type": "tag", "begin": "", "content": fmt["content"], "end": fmt["end"]}
    return fmt


def _ends(fmt: dict[str, Any]) -> list[bytes]:
    end = fmt["end"]
    return [e.encode() for e in (end if isinstance(end, list) else [end]) if e]


def _consume(stack: Stack, s: bytes, i: int, rewinds: list[int]) -> Iterator[Stack]:
    """Every stack left once ``s[i:]`` is matched against ``stack`` (nothing when it cannot be);
    ``rewinds`` collects where JSON content began that ``s`` ends inside."""
    if i == len(s):
        yield stack
        return
    if not stack:
        return
    head, rest = stack[0], stack[1:]
    kind = head.get("type")
    if kind == "const_string":
        value, tail = head["value"].encode(), s[i:]
        if tail.startswith(value):
            yield from _consume(rest, s, i + len(value), rewinds)
        elif value.startswith(tail):
            yield ({"type": "const_string", "value": value[len(tail):].decode()},) + rest
    elif kind == "sequence":
        yield from _consume(tuple(head["elements"]) + rest, s, i, rewinds)
    elif kind == "optional":
        yield from _consume(rest, s, i, rewinds)
        yield from _consume((head["content"],) + rest, s, i, rewinds)
    elif kind == "or":
        for e in head["elements"]:
            yield from _consume((e,) + rest, s, i, rewinds)
    elif kind == "tag":
        content = {"type": _CONTENT, "content": head["content"], "end": head["end"]}
        yield from _consume(({"type": "const_string", "value": head["begin"]}, content) + rest, s, i, rewinds)
    elif kind == _CONTENT:
        yield from _content(head, rest, s, i, rewinds)
    elif kind == "any_text":  # free text with no end: it takes the rest of the output
        yield stack
    else:
        raise Unsupported(f"format {kind!r}")


def _content(head: dict[str, Any], rest: Stack, s: bytes, i: int, rewinds: list[int]) -> Iterator[Stack]:
    tail = s[i:]
    hits = sorted((tail.find(e), e) for e in _ends(head) if tail.find(e) >= 0)
    content = head["content"]
    if content.get("type") == "any_text":
        excludes = [x.encode() for x in content.get("excludes") or ()]
        body = tail[:hits[0][0]] if hits else tail
        if any(x in body for x in excludes):
            return
        if hits:
            yield from _consume(rest, s, i + hits[0][0] + len(hits[0][1]), rewinds)
        else:
            yield (head,) + rest
    elif hits:  # structured content written whole (its end follows it)
        yield from _consume(rest, s, i + hits[0][0] + len(hits[0][1]), rewinds)
    else:  # inside JSON (or another structured content): restart it
        rewinds.append(i)
