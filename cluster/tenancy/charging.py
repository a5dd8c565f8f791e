"""The charging arithmetic, pure: what admission reserves before the work (the prompt's
estimated tokens plus the output allowance), what a finished request is charged (what the
client received), and the OpenAI rate-limit header values.

The gateway has no tokenizer: the prompt estimate is the prompt text's UTF-8 bytes / 4
(rounded up), OpenAI's rule of thumb; settlement corrects it with the engine's count."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BYTES_PER_TOKEN = 4
PROMPT_FIELDS = ("messages", "prompt", "input", "instructions", "system")  # system: Anthropic's
OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _text_bytes(value: Any) -> int:
    # A parsed JSON body's values are exactly str, dict, list, numbers, booleans and None: those
    # first, by type (an isinstance against the Mapping ABC per value cost admission more than the
    # walk itself); anything else (a caller's own mapping or tuple) as before.
    kind = type(value)
    if kind is str:
        return len(value) if value.isascii() else len(value.encode())
    if kind is dict:
        return sum(map(_text_bytes, value.values()))
    if kind is list:
        return sum(map(_text_bytes, value))
    if value is None or kind in (int, float, bool):
        return 0
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, Mapping):
        return sum(_text_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_text_bytes(v) for v in value)
    return 0


def prompt_estimate(data: Mapping[str, Any]) -> int:
    """Tokens of the prompt, estimated: bytes of every string in messages / prompt /
    input / instructions / system, divided by 4, rounded up; at least 1."""
    size = sum(_text_bytes(data.get(f)) for f in PROMPT_FIELDS)
    return max(1, math.ceil(size / BYTES_PER_TOKEN))


def reasoning_effort(data: Mapping[str, Any]) -> str | None:
    """`reasoning_effort` (chat) or `reasoning.effort` (Responses)."""
    effort = data.get("reasoning_effort")
    reasoning = data.get("reasoning")
    if effort is None and isinstance(reasoning, Mapping):
        effort = reasoning.get("effort")
    return effort if isinstance(effort, str) else None


def output_allowance(data: Mapping[str, Any], *, cap: int, defaults: Mapping[str, int], n: int = 1) -> int:
    """The output tokens reserved: the request's max_tokens / max_completion_tokens /
    max_output_tokens when set, else the model's default for its reasoning effort
    (``defaults``: effort -> tokens, key "default" when no effort or an unlisted one);
    capped by the tenant's cap; times `n` choices."""
    asked = next((data[f] for f in OUTPUT_FIELDS if isinstance(data.get(f), int) and data[f] > 0), None)
    if asked is None:
        effort = reasoning_effort(data)
        asked = defaults.get(effort, defaults.get("default", cap)) if effort else defaults.get("default", cap)
    return min(int(asked), cap) * max(1, n)


def reservation(data: Mapping[str, Any], *, cap: int, defaults: Mapping[str, int], estimate: int | None = None) -> int:
    """Tokens charged before the work: prompt estimate (``estimate``: already computed) + output allowance."""
    n = data.get("n") if isinstance(data.get("n"), int) else 1
    prompt = prompt_estimate(data) if estimate is None else estimate
    return prompt + output_allowance(data, cap=cap, defaults=defaults, n=n)


@dataclass(frozen=True)
class Outcome:
    """What the client received, as settlement sees it."""

    status: int
    prompt_tokens: int | None = None  # the engine's counts, when its usage arrived
    completion_tokens: int | None = None
    token_events: int = 0  # token events relayed (a stream that ended early)


def charge(outcome: Outcome, *, estimate: int) -> tuple[int, int]:
    """(prompt, completion) tokens a finished request is charged: the engine's usage when
    it reported one; a stream cut short is charged the prompt estimate and one token per
    event relayed; a request that delivered nothing (refused, failed before any output) is
    charged nothing. (A Messages stream tells its input tokens at its start and its output
    tokens at its end: cut in between, it is charged its input and the events relayed.)"""
    prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
    if completion is None and outcome.token_events > 0:
        return (estimate if prompt is None else prompt), outcome.token_events
    if prompt is not None or completion is not None:
        return prompt or 0, completion or 0
    return 0, 0


def settlement(reserved: int, charged: int) -> int:
    """Tokens to add to what was reserved (negative: a refund)."""
    return charged - reserved


def format_reset(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* form: `1s`, `6m0s`, `1h2m3s`, `250ms`."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    total = math.ceil(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    return f"{m}m{s}s" if m else f"{s}s"


@dataclass(frozen=True)
class Window:
    """One limit's state after a decision, as OpenAI's x-ratelimit-* headers define it:
    ``limit`` is what may be sent before the limit is exhausted, i.e. the bucket's capacity
    (requests: the tenant's `burst`, not its per-minute rate; tokens: tokens_per_minute), so
    that ``remaining`` never exceeds it and is back at it after ``reset_s``."""

    limit: float
    remaining: float
    reset_s: float  # until the bucket is full again


def ratelimit_headers(requests: Window | None, tokens: Window | None) -> dict[str, str]:
    """x-ratelimit-limit|remaining|reset-requests|tokens for the limits a tenant has (by name;
    admission puts ``ratelimit_header_pairs`` on the response)."""
    return {k.decode(): v.decode() for k, v in ratelimit_header_pairs(requests, tokens)}


_RATELIMIT_NAMES = {kind: (f"x-ratelimit-limit-{kind}".encode(), f"x-ratelimit-remaining-{kind}".encode(),
                           f"x-ratelimit-reset-{kind}".encode()) for kind in ("requests", "tokens")}


def plain_number(x: float) -> str:
    """A limit as OpenAI writes it: an integer, never an exponent (`:g` wrote 1,000,000 as
    "1e+06", which clients reading the header as an integer refuse); a fractional one in
    plain decimals."""
    return "%d" % x if x == int(x) else f"{x:f}".rstrip("0")


def ratelimit_header_pairs(requests: Window | None, tokens: Window | None) -> list[tuple[bytes, bytes]]:
    """``ratelimit_headers`` as the response's (name, value) byte pairs, built directly."""
    out: list[tuple[bytes, bytes]] = []
    for kind, w in (("requests", requests), ("tokens", tokens)):
        if w is not None:
            limit, remaining, reset = _RATELIMIT_NAMES[kind]
            out += ((limit, plain_number(w.limit).encode()), (remaining, b"%d" % max(0, math.floor(w.remaining))),
                    (reset, format_reset(w.reset_s).encode()))
    return out


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
