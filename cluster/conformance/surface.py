"""The API surface of a conformance observation: what a rollout's conformance gate compares
between a candidate and stable (docs/rollouts.md). Status codes, event kinds and their order
(runs collapsed), which fields are present, tool calls (their names, and whether their
arguments parse) and structured output that parses — never the generated text, which a new
model or engine version legitimately changes."""

from __future__ import annotations

from typing import Any

from cluster.conformance import Row, differences

KEPT = frozenset({"status", "deltas", "events", "items", "blocks", "state", "error", "type"})  # compared as they are
CALLS = frozenset({"tool_calls", "calls", "tool_use"})


def surface(obs: Any) -> Any:
    """An observation ({"status", ...}) field by field; several (a case's variants) each;
    any other mapping (parsed JSON, usage) as present-and-parsed."""
    if isinstance(obs, dict):
        if set(obs) == {"unparsed"}:
            return "unparsed"
        if "status" in obs:
            return {k: _field(k, v) for k, v in obs.items()}
        if obs and all(isinstance(v, dict) and "status" in v for v in obs.values()):
            return {k: surface(v) for k, v in obs.items()}
        return True
    return obs is not None and obs != ""


def _field(key: str, value: Any) -> Any:
    if key in KEPT:
        return _runs(value) if isinstance(value, list) else value
    if key in CALLS:
        return None if not value else [_call(c) for c in value]
    if isinstance(value, dict):
        return surface(value)
    if isinstance(value, list):  # e.g. a parsed JSON array: it parsed
        return True
    return value is not None and value != ""


def _call(call: Any) -> Any:
    if isinstance(call, (list, tuple)) and len(call) == 2:
        name, args = call
        return [name, not (isinstance(args, dict) and set(args) == {"unparsed"}) and args is not None]
    return surface(call)


def _runs(seq: list) -> list:
    out: list = []
    for x in seq:
        if not out or out[-1] != x:
            out.append(x)
    return out


def failed_rows(rows: list[Row]) -> list[str]:
    """The features whose surface differs between the two sides (stable as the engine side)."""
    return [r.feature for r in rows if differences(surface(r.engine), surface(r.gateway))]
