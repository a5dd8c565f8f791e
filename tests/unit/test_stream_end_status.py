"""A client that closes a stream once it has the stream's last event (`data: [DONE]`) got the
whole answer: the request is a 200 in owc_requests_total, the access log and `owc usage`, not a
499 (review 10: the OpenAI SDK closes the connection right after [DONE]; while the engine had
not yet ended its response, about a third of its streams were counted as client errors). A
client that leaves before the last event is still a 499."""

from __future__ import annotations

import httpx

from tests.conftest import fake_engine_argv, gateway_argv, metric, server, wait_for


def _stream(url: str, *, leave_after: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
    with httpx.Client(timeout=30) as c, c.stream("POST", url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith(leave_after):
                break  # the connection is closed without reading the response's end


def test_a_client_leaving_after_the_last_event_was_answered():
    engine = [*fake_engine_argv("m", itl_ms=20), "--done-linger-ms", "500"]
    with server(engine) as e, server(gateway_argv(f"m={e.url}")) as gw:
        for _ in range(3):
            _stream(gw.url, leave_after="data: [DONE]")
        _stream(gw.url, leave_after='data: {"id"')  # mid-stream: a 499

        def counted():
            ok = metric(gw.metrics_url, "owc_requests_total", model="m", code="200")
            gone = metric(gw.metrics_url, "owc_requests_total", model="m", code="499")
            return (ok, gone) if ok + gone >= 4 else None

        assert wait_for(counted, 10, "the four streams counted") == (3, 1)
