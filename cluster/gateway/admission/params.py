"""OpenAI request parameters that SDKs and gateways send but that change nothing on a
self-hosted model: accepted, never a 400. This table is the one list: validation leaves
them out of its schema check (cluster.gateway.admission.validation), admission builds the engine's
body from it (a parameter vLLM itself takes on that route goes on unchanged, so vLLM checks,
echoes or maps it exactly as it would for a direct client; any other is dropped before the
engine), and the README's list is rendered from it (tests/unit/test_params.py keeps the two
equal). A dotted name is a field inside an object parameter (`stream_options.include_obfuscation`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from cluster.gateway.context import ALL, CHAT, COMPLETIONS, RESPONSES  # noqa: F401 (the routes, named once)


@dataclass(frozen=True)
class Accepted:
    why: str  # what it is for on OpenAI's platform, and why it changes nothing here
    routes: tuple[str, ...]  # the routes OpenAI defines it on
    engine: tuple[str, ...] = ()  # routes on which vLLM takes it itself: passed on; elsewhere dropped
    example: Any = None  # a value OpenAI accepts (the tests and `owc conformance` send it)

    def action(self, route: str) -> str:
        return "passed to vLLM" if route in self.engine else "dropped"


ACCEPTED: dict[str, Accepted] = {
    "service_tier": Accepted(
        "OpenAI's processing tiers (flex, priority); an owc cluster has one tier: its own routing and "
        "tenant limits decide", (CHAT, RESPONSES), engine=(RESPONSES,), example="auto"),
    "safety_identifier": Accepted(
        "end-user id for OpenAI's abuse detection; owc's access log records the tenant instead",
        (CHAT, RESPONSES), example="user-hash-1"),
    "prompt_cache_key": Accepted(
        "routing hint for OpenAI's prompt cache; owc's prefix routing keeps shared prefixes on one "
        "replica, and vLLM ignores the key", (CHAT, RESPONSES), engine=(RESPONSES,), example="conversation-1"),
    "prompt_cache_retention": Accepted(
        "how long OpenAI keeps cached prefixes; vLLM's prefix cache keeps blocks while KV memory allows",
        (CHAT, RESPONSES), example="in_memory"),
    "prompt_cache_options": Accepted(
        "OpenAI's cache breakpoints and TTL; vLLM caches every shared prefix block automatically",
        (CHAT, RESPONSES), example={"ttl": "30m"}),
    "verbosity": Accepted(
        "GPT-5's output-length control; open-weight models have none (in responses it is "
        "`text.verbosity`, which vLLM accepts and ignores)", (CHAT,), example="low"),
    "moderation": Accepted(
        "OpenAI's moderation of input and output; no moderation service runs in owc",
        (CHAT, RESPONSES), example={"model": "omni-moderation-latest"}),
    "stream_options.include_obfuscation": Accepted(
        "random padding on OpenAI's stream events against size side channels on the public internet; "
        "owc's streams carry vLLM's events unpadded", ALL, example=False),
    "store": Accepted(
        "OpenAI's stored chat completions (evals, distillation); owc stores no completion (responses: "
        "`store` is vLLM's own parameter, see VLLM_ENABLE_RESPONSES_API_STORE)", (CHAT,), example=False),
    "metadata": Accepted(
        "tags shown in OpenAI's dashboard; vLLM echoes them in a response object, chat drops them",
        (CHAT, RESPONSES), engine=(RESPONSES,), example={"team": "search"}),
    "user": Accepted(
        "end-user id (deprecated by OpenAI for safety_identifier and prompt_cache_key); owc uses it as "
        "the session-affinity key when no X-Session-Id header is sent", ALL, engine=ALL, example="user-1"),
}


def accepted_on(route: str) -> dict[str, Accepted]:
    return {name: a for name, a in ACCEPTED.items() if route in a.routes}


@functools.cache
def _names(route: str, *, for_engine: bool) -> tuple[tuple[str, str], ...]:
    """The accepted parameters of ``route`` as (parent, child) pairs (child "" for a top-level
    one), split once: read on every request. ``for_engine``: only those vLLM does not take there."""
    return tuple((parent, child) for name, a in ACCEPTED.items()
                 if route in a.routes and not (for_engine and route in a.engine)
                 for parent, _, child in [name.partition(".")])


def without_accepted(data: dict[str, Any], route: str) -> dict[str, Any]:
    """``data`` less every accepted parameter of ``route`` (a copy; nested ones too): what
    the schema checks."""
    out = dict(data)
    for parent, child in _names(route, for_engine=False):
        if parent not in out:
            continue
        if not child:
            del out[parent]
        elif isinstance(out[parent], dict) and child in out[parent]:
            out[parent] = {k: v for k, v in out[parent].items() if k != child}
            if not out[parent]:
                del out[parent]
    return out


def drop_for_engine(data: dict[str, Any], route: str) -> bool:
    """Remove, in place, the accepted parameters vLLM does not take on ``route``; True when
    something was removed (the engine's body must be re-serialised). An object parameter
    left empty goes too, unless vLLM takes it on this route (``engine_fields``)."""
    dropped = False
    for parent, child in _names(route, for_engine=True):
        if parent not in data:
            continue
        if not child:
            del data[parent]
            dropped = True
        elif isinstance(data[parent], dict) and child in data[parent]:
            rest = {k: v for k, v in data[parent].items() if k != child}
            if rest or parent in ENGINE_OBJECTS.get(route, ()):
                data[parent] = rest
            else:
                del data[parent]
            dropped = True
    return dropped


# Object parameters that vLLM itself takes on a route (an empty one stays).
ENGINE_OBJECTS: dict[str, tuple[str, ...]] = {CHAT: ("stream_options",), COMPLETIONS: ("stream_options",)}


def readme_table() -> str:
    """The README's list of accepted-and-ignored parameters, rendered from ACCEPTED."""
    short = {CHAT: "chat", COMPLETIONS: "completions", RESPONSES: "responses"}
    rows = ["| parameter | routes | what owc does | why |", "|---|---|---|---|"]
    for name, a in ACCEPTED.items():
        actions: dict[str, list[str]] = {}
        for route in a.routes:
            actions.setdefault(a.action(route), []).append(short[route])
        does = "; ".join(f"{act} ({', '.join(rs)})" for act, rs in actions.items())
        rows.append(f"| `{name}` | {', '.join(short[r] for r in a.routes)} | {does} | {a.why} |")
    return "\n".join(rows)
