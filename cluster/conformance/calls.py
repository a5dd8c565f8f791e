"""What one side (the bare engine or the gateway) answers to one call, reduced to the parts
that must agree: status code, event-type sequence, greedy text, reasoning, tool calls with
parsed arguments, parsed JSON, usage. Ids, timestamps and fingerprints differ by design and
are left out."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

Observation = dict[str, Any]


def parsed(text: str | None) -> Any:
    """JSON text as its value; anything else as {"unparsed": text} (so that a mismatch shows)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {"unparsed": text}


def observe(call: Callable[[], Observation]) -> Observation:
    """The call's observation, or its HTTP status when the server refused it."""
    import openai

    try:
        return {"status": 200, **call()}
    except openai.APIStatusError as e:
        return {"status": e.status_code}
    except openai.APIError as e:  # e.g. an error event in a stream
        return {"status": "stream error", "error": type(e).__name__}
    except openai.APIConnectionError as e:
        return {"status": "no connection", "error": str(e)[:80]}


def _usage(u: Any) -> dict[str, Any] | None:
    if u is None:
        return None
    d = u.model_dump() if hasattr(u, "model_dump") else dict(u)
    details = d.get("completion_tokens_details") or d.get("output_tokens_details") or {}
    return {"in": d.get("prompt_tokens", d.get("input_tokens")), "out": d.get("completion_tokens", d.get("output_tokens")),
            "reasoning": details.get("reasoning_tokens")}


def _calls(tool_calls: Iterable[Any] | None) -> list[list[Any]] | None:
    if not tool_calls:
        return None
    return [[t.function.name, parsed(t.function.arguments)] for t in tool_calls]


def chat(client: Any, **kwargs: Any) -> Observation:
    """A non-streamed chat completion."""
    r = client.chat.completions.create(**kwargs)
    m = r.choices[0].message
    return {"text": m.content, "reasoning": getattr(m, "reasoning", None) or (m.model_extra or {}).get("reasoning"),
            "tool_calls": _calls(m.tool_calls), "finish": r.choices[0].finish_reason, "usage": _usage(r.usage)}


def chat_stream(client: Any, **kwargs: Any) -> Observation:
    """A streamed chat completion: the kinds of its deltas in order (runs collapsed), the
    text, reasoning and tool calls put together from them."""
    kinds: list[str] = []
    text, reasoning = [], []
    calls: dict[int, list[str]] = {}
    finish = None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if not chunk.choices:
            kinds.append("usage")
            continue
        choice = chunk.choices[0]
        d = choice.delta
        extra = d.model_extra or {}
        r = getattr(d, "reasoning", None) or extra.get("reasoning")
        for kind, present in (("role", d.role), ("reasoning", r), ("content", d.content), ("tool_calls", d.tool_calls),
                              ("finish", choice.finish_reason)):
            if present and (not kinds or kinds[-1] != kind):
                kinds.append(kind)
        text.append(d.content or "")
        reasoning.append(r or "")
        for t in d.tool_calls or []:
            entry = calls.setdefault(t.index, ["", ""])
            entry[0] += (t.function.name or "") if t.function else ""
            entry[1] += (t.function.arguments or "") if t.function else ""
        finish = choice.finish_reason or finish
    return {"deltas": kinds, "text": "".join(text), "reasoning": "".join(reasoning) or None,
            "tool_calls": [[n, parsed(a)] for _, (n, a) in sorted(calls.items())] or None, "finish": finish}


def _items(output: Iterable[Any]) -> tuple[list[str], list[list[Any]] | None, str | None]:
    types, calls, reasoning = [], [], []
    for item in output:
        types.append(item.type)
        if item.type == "function_call":
            calls.append([item.name, parsed(item.arguments)])
        elif item.type == "reasoning":
            reasoning += [c.text for c in (item.content or []) if getattr(c, "text", None)]
    return types, calls or None, "".join(reasoning) or None


def responses(client: Any, **kwargs: Any) -> Observation:
    """A non-streamed response: its output item types, text, reasoning, calls, usage."""
    return response(client.responses.create(**kwargs))


def response(r: Any) -> Observation:
    """A Responses API object (created or retrieved): its output item types, text, reasoning, calls, usage."""
    types, calls, reasoning = _items(r.output)
    return {"items": types, "text": r.output_text, "reasoning": reasoning, "tool_calls": calls,
            "state": r.status, "usage": _usage(r.usage)}


_FINAL_NAMES = {"incomplete": "response.incomplete", "failed": "response.failed"}


def responses_stream(client: Any, **kwargs: Any) -> Observation:
    """A streamed response: the sequence of event types, and the final response's parts."""
    events: list[str] = []
    final = None
    for event in client.responses.create(stream=True, **kwargs):
        if event.type in ("response.completed", "response.incomplete", "response.failed"):
            final = event.response
            # Named as OpenAI names it for the response's status: vLLM says response.completed
            # for a response cut by max_output_tokens, the gateway response.incomplete.
            events.append(_FINAL_NAMES.get(final.status, "response.completed"))
        else:
            events.append(event.type)
    out: Observation = {"events": events}
    if final is not None:
        types, calls, reasoning = _items(final.output)
        out.update(items=types, text=final.output_text, reasoning=reasoning, tool_calls=calls,
                   usage=_usage(final.usage))
    return out
