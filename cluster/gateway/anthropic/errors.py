"""Errors in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}`` with
Anthropic's canonical type names, whatever the failure came as — the gateway's own errors
(OpenAI-shaped, cluster.gateway.errors), vLLM's Anthropic errors (its exception class names
as types: ``NotFoundError``, ``BadRequestError``, mid-stream ``internal_error``) and vLLM's
request-validation errors (OpenAI-shaped, type ``Bad Request``). The HTTP status is kept; the
type follows from it, as Anthropic's API pairs them. No HTTP library here."""

from __future__ import annotations

from typing import Any

import orjson

# Anthropic's canonical error types, by the status they come with.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",  # the gateway's "no replica reachable / scaled to zero, starting"
    529: "overloaded_error",
}
TYPES = frozenset(_TYPE_BY_STATUS.values())
_STREAM_TYPES = {"internal_error": "api_error", "overloaded": "overloaded_error"}  # vLLM's mid-stream names


def error_type(status: int) -> str:
    """Anthropic's type for an HTTP status: any other 4xx is an invalid request, 5xx an API error."""
    return _TYPE_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")


def message_of(body: bytes) -> str:
    """The message of an error body in any of the shapes that reach the gateway."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode(errors="replace").strip()
    if not isinstance(data, dict):
        return str(data)[:500]
    err: Any = data.get("error", data)
    if isinstance(err, str):
        return err
    if isinstance(err, dict):
        for key in ("message", "detail"):
            value = err.get(key)
            if isinstance(value, str) and value:
                return value
            if value:  # FastAPI's list of validation problems
                return orjson.dumps(value).decode()
    return ""


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message or f"HTTP {status}"}}


MISSING_KEY = "missing API key: send 'x-api-key: <key>' (or 'Authorization: Bearer <key>')"


def anthropic_error(status: int, body: bytes) -> bytes:
    """An error response's body (any shape) as Anthropic's, for ``status``; a missing key is
    told as Anthropic's clients send one."""
    message = message_of(body)
    if status == 401 and message.startswith("missing API key"):
        message = MISSING_KEY
    return orjson.dumps(error_body(status, message))


def error_event(status: int, message: str) -> bytes:
    """A stream's end on a failure: Anthropic's ``event: error`` (its SDK raises on it)."""
    return b"event: error\ndata: " + orjson.dumps(error_body(status, message)) + b"\n\n"


def canonical_stream_error(data: dict[str, Any]) -> dict[str, Any]:
    """An ``error`` stream event as Anthropic names its types (vLLM's ``internal_error``: ``api_error``)."""
    err = data.get("error")
    if isinstance(err, dict) and err.get("type") not in TYPES:
        kind = err.get("type")
        err = {**err, "type": _STREAM_TYPES.get(kind, "api_error") if isinstance(kind, str) else "api_error"}
        return {**data, "type": "error", "error": err}
    return data
