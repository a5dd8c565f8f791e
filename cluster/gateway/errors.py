"""The one place where failures become OpenAI-shaped errors:
``{"error": {"message", "type", "param", "code"}}`` with the right HTTP status. No HTTP
library here (flow control raises these and stays pure): the FastAPI routes turn one into a
response with cluster.gateway.routes.error_response."""

from __future__ import annotations

import orjson

# Retry-After, in one place: a refusal that clears within a scrape or two (a full queue, no
# replica reachable, a tenant's concurrency) says "soon"; a model scaled to zero whose first
# replica did not start in time says "a replica is starting" (an engine start takes ~10 s+).
RETRY_SOON = {"Retry-After": "1"}
RETRY_STARTING = {"Retry-After": "10"}

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "invalid_request_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def error_type(status: int) -> str:
    return _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,  # noqa: A002 - the OpenAI field's name
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or error_type(status)
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def model_not_found(model: str) -> OpenAIError:
    """A model name the gateway does not serve (or not to this tenant): says where the names are."""
    return OpenAIError(404, f"The model '{model}' does not exist; GET /v1/models lists the models you can use",
                       param="model", code="model_not_found")


def from_upstream(status: int, body: bytes) -> OpenAIError:
    """Normalise an engine's error response (vLLM's own shape varies) to ours."""
    message, param = None, None
    try:
        data = orjson.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else {}
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail")
            param = err.get("param") if isinstance(err.get("param"), str) else None
        elif isinstance(err, str):
            message = err
    except orjson.JSONDecodeError:
        pass
    if not message:
        message = body[:500].decode(errors="replace") or f"engine returned HTTP {status}"
    if status >= 500:
        # The engine failed: that is a bad gateway from the client's point of view.
        return OpenAIError(502, f"engine error: {message}", code="engine_error")
    return OpenAIError(status, str(message), param=param, code=_code_for(status))


def _code_for(status: int) -> str | None:
    return {400: "invalid_request", 404: "not_found", 413: "request_too_large", 429: "rate_limited"}.get(status)


def sse_error_event(err: OpenAIError) -> bytes:
    return b"data: " + orjson.dumps(err.body()) + b"\n\ndata: [DONE]\n\n"
