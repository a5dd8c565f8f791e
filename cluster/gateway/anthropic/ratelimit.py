"""Anthropic's rate-limit headers beside OpenAI's: the gateway's limits are written once, as
OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (cluster.tenancy.charging),
and the Messages routes add ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``
from them, the reset as Anthropic gives it: the RFC 3339 time the bucket is full again. (owc's
token limit counts input and output together: Anthropic's ``tokens-*``, the most restrictive
limit, not its ``input-tokens-*``/``output-tokens-*``.) No HTTP library here."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

_OPENAI = b"x-ratelimit-"
_PART = re.compile(rb"(\d+)(ms|h|m|s)")
_SECONDS = {b"h": 3600.0, b"m": 60.0, b"s": 1.0, b"ms": 0.001}


def reset_seconds(value: bytes) -> float | None:
    """Seconds in OpenAI's reset form (`1h2m3s`, `6m0s`, `250ms`, `0s`); None when not that form."""
    parts = _PART.findall(value)
    if not parts or b"".join(n + u for n, u in parts) != value:
        return None
    return sum(int(n) * _SECONDS[u] for n, u in parts)


def anthropic_headers(headers: Sequence[tuple[bytes, bytes]],
                      clock: Callable[[], float] = time.time) -> list[tuple[bytes, bytes]]:
    """The Anthropic headers for the OpenAI rate-limit headers among ``headers`` (none: [])."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        name = name.lower()
        if not name.startswith(_OPENAI):
            continue
        field, _, kind = name[len(_OPENAI):].partition(b"-")  # limit|remaining|reset, requests|tokens
        if kind not in (b"requests", b"tokens") or field not in (b"limit", b"remaining", b"reset"):
            continue
        if field == b"reset":
            seconds = reset_seconds(value)
            if seconds is None:
                continue
            at = datetime.fromtimestamp(math.ceil(clock() + seconds), tz=timezone.utc)  # never before it
            value = at.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
        out.append((b"anthropic-ratelimit-" + kind + b"-" + field, value))
    return out
