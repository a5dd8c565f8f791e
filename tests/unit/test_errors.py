import orjson
import pytest

from cluster.gateway.errors import OpenAIError, error_type, from_upstream, sse_error_event
from cluster.gateway.routes import error_response


@pytest.mark.parametrize(
    "status, type_",
    [(400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"), (404, "not_found_error"),
     (413, "invalid_request_error"), (415, "invalid_request_error"), (429, "rate_limit_error"), (500, "server_error"),
     (502, "upstream_error"), (503, "service_unavailable"), (504, "timeout_error"), (418, "invalid_request_error")],
)
def test_status_to_type(status, type_):
    assert error_type(status) == type_


@pytest.mark.parametrize(
    "status, body, out_status, message, param",
    [
        # vLLM's own error body
        (400, b'{"error":{"message":"max_tokens=5000 cannot be greater than max_model_len=1024.","type":"BadRequestError","param":"max_tokens","code":400}}',
         400, "max_tokens=5000 cannot be greater than max_model_len=1024.", "max_tokens"),
        # FastAPI-style detail
        (422, b'{"detail": "bad thing"}', 422, "bad thing", None),
        (404, b'{"error": "plain string"}', 404, "plain string", None),
        (400, b"not json at all", 400, "not json at all", None),
        (400, b"", 400, "engine returned HTTP 400", None),
        # engine failures are the gateway's 502, never a bare 500
        (500, b'{"error":{"message":"CUDA error"}}', 502, "engine error: CUDA error", None),
    ],
)
def test_upstream_errors_are_normalised(status, body, out_status, message, param):
    err = from_upstream(status, body)
    assert (err.status, err.message, err.param) == (out_status, message, param)
    shape = err.body()["error"]
    assert set(shape) == {"message", "type", "param", "code"}
    assert shape["type"] == error_type(out_status)
    assert shape["code"] is None or isinstance(shape["code"], str)


def test_response_carries_status_headers_and_shape():
    r = error_response(OpenAIError(503, "busy", code="no_healthy_replica", headers={"Retry-After": "1"}), {"x-request-id": "r1"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.headers["x-request-id"] == "r1"
    assert orjson.loads(r.body) == {"error": {"message": "busy", "type": "service_unavailable", "param": None, "code": "no_healthy_replica"}}


def test_sse_error_event_ends_the_stream():
    data = sse_error_event(OpenAIError(502, "broke", code="engine_stream_broken"))
    first, done, tail = data.split(b"\n\n")
    assert orjson.loads(first.removeprefix(b"data: "))["error"]["code"] == "engine_stream_broken"
    assert done == b"data: [DONE]" and tail == b""
