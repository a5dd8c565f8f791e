"""A structured output's JSON Schema (`text.format.schema`, chat's
`response_format.json_schema.schema`) checked against the JSON Schema meta-schema before an
engine sees it: a malformed one is the client's 400, naming where it is. Sent on, vLLM 0.32
refuses such a schema only when it compiles its grammar: unstreamed, with a 400 that names
neither the schema nor the parameter ("Invalid grammar specification: 'triggers'", gpt-oss);
streamed, after `response.created` and `response.in_progress`, by closing the connection,
which reads as a dead engine: the replica leaves routing for a while and the stream is
resumed on another, which refuses it too.

Lenient where drafts differ: a schema valid under Draft 7 (what many clients still write,
e.g. `items` as a list) or Draft 2020-12 (OpenAI's) passes; the engine judges the rest. A
check costs ~0.3 ms of gateway CPU (Draft 7 first; Draft 2020-12, ~1.4 ms, only for a schema
Draft 7 refuses), so verdicts are kept per schema: an agent sends the same one every turn."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from jsonschema import Draft7Validator, Draft202012Validator

from cluster.gateway.context import CHAT, RESPONSES
from cluster.gateway.errors import OpenAIError

_DRAFTS = (Draft7Validator(Draft7Validator.META_SCHEMA), Draft202012Validator(Draft202012Validator.META_SCHEMA))


def check_schemas(data: dict[str, Any], route: str) -> None:
    """Raise a 400 `invalid_json_schema` when the request's structured output schema is malformed."""
    found = _schema(data, route)
    if found is None:
        return
    param, schema = found
    try:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # JSON from the client: only an over-deep one; the engine judges it
        return
    problem = _verdict(key)
    if problem is not None:
        raise OpenAIError(400, f"Invalid JSON Schema in '{param}': {problem}", param=param, code="invalid_json_schema")


def _schema(data: dict[str, Any], route: str) -> tuple[str, Any] | None:
    if route == RESPONSES:
        text = data.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and "schema" in fmt:
            return "text.format.schema", fmt["schema"]
    elif route == CHAT:
        fmt = data.get("response_format")
        spec = fmt.get("json_schema") if isinstance(fmt, dict) and fmt.get("type") == "json_schema" else None
        if isinstance(spec, dict) and "schema" in spec:
            return "response_format.json_schema.schema", spec["schema"]
    return None


@lru_cache(maxsize=1024)
def _verdict(key: bytes) -> str | None:
    """``_problem`` of the schema whose bytes (keys sorted) are ``key``, kept per schema."""
    return _problem(orjson.loads(key))


def _problem(schema: Any) -> str | None:
    """None when ``schema`` is a valid JSON Schema under one of the drafts; else what is wrong, and where."""
    errors = []
    for meta in _DRAFTS:
        error = next(iter(meta.iter_errors(schema)), None)
        if error is None:
            return None
        errors.append(error)
    first = errors[-1]  # Draft 2020-12's words: OpenAI's draft
    at = "/".join(str(p) for p in first.path)
    return first.message + (f" (at '{at}')" if at else "")
