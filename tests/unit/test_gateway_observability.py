"""The gateway's metrics, access log, tenant limits and traces, over real HTTP in front of
the fake engine, with a real OTLP/HTTP exporter sending to an in-test collector."""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from cluster.config.schema import AccessLog as AccessLogConfig
from cluster.gateway.observability.access_log import AccessLog, prompt_of
from tests.conftest import fake_engine_argv, gateway_argv, server
from tests.conftest import metric

KEYS = {"sk-a": "team-a", "sk-limited": "limited"}
SECRET = "the secret prompt text"


class Collector:
    def __init__(self):
        self.requests: list[ExportTraceServiceRequest] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                outer.requests.append(req)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/traces"

    def spans(self):
        return [s for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]


@pytest.fixture(scope="module")
def collector():
    c = Collector()
    yield c
    c.httpd.shutdown()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, collector):
    d = tmp_path_factory.mktemp("obs")
    cfg = d / "owc.yaml"
    cfg.write_text(yaml.safe_dump({
        "models": {"fake-model": {"source": "external"}},
        "gateway": {
            "api_keys_env": "OBS_TEST_KEYS",
            "tenants": {"limited": {"requests_per_minute": 1, "burst": 1}},
            "access_log": {"path": str(d / "access.log")},
            "tracing": {"otlp_endpoint": collector.url, "service_name": "owc-gateway-test"},
        },
    }))
    env = {"OBS_TEST_KEYS": ",".join(f"{k}={t}" for k, t in KEYS.items())}
    with server(fake_engine_argv("fake-model", itl_ms=1)) as e, \
            server(gateway_argv(f"fake-model={e.url}", config=str(cfg)), env=env) as g:
        yield g, d / "access.log"


def post(url, body, key="sk-a", **headers):
    return httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}", **headers}, timeout=30)


def events(text: str) -> list:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def test_stream_tokens_ttft_itl_and_usage_stripping(stack):
    g, _ = stack
    before = {n: metric(g.metrics_url, n, model="fake-model") for n in (
        "owc_completion_tokens_total", "owc_time_to_first_token_seconds_count", "owc_inter_token_latency_seconds_count")}
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 7, "stream": True}
    r = post(g.url, body)
    assert r.status_code == 200
    evs = events(r.text)
    assert all(e["choices"] for e in evs), "a usage event the client did not ask for leaked"
    assert sum(bool(e["choices"][0]["delta"].get("content")) for e in evs) == 7
    assert r.text.rstrip().endswith("data: [DONE]")
    r = post(g.url, {**body, "stream_options": {"include_usage": True}})
    evs = events(r.text)
    assert evs[-1]["choices"] == [] and evs[-1]["usage"]["completion_tokens"] == 7, "client-requested usage dropped"
    after = {n: metric(g.metrics_url, n, model="fake-model") for n in before}
    assert after["owc_completion_tokens_total"] - before["owc_completion_tokens_total"] == 14
    assert after["owc_time_to_first_token_seconds_count"] - before["owc_time_to_first_token_seconds_count"] == 2
    # Token events arrive one by one here (1 ms apart); coalesced reads would count fewer.
    # (each stream: the role event, then 7 token events: at most 7 gaps each)
    assert 2 <= after["owc_inter_token_latency_seconds_count"] - before["owc_inter_token_latency_seconds_count"] <= 14


def test_non_stream_tokens_by_tenant_and_duration(stack):
    g, _ = stack
    before = metric(g.metrics_url, "owc_prompt_tokens_total", tenant="team-a")
    n0 = metric(g.metrics_url, "owc_request_duration_seconds_count", route="/v1/chat/completions")
    picks0 = metric(g.metrics_url, "owc_routing_plugin_seconds_count", plugin="picker:max_score")
    filters0 = metric(g.metrics_url, "owc_routing_plugin_seconds_count", plugin="filter:healthy")
    r = post(g.url, {"model": "fake-model", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 3})
    assert r.status_code == 200
    usage = r.json()["usage"]
    assert metric(g.metrics_url, "owc_prompt_tokens_total", tenant="team-a") - before == usage["prompt_tokens"]
    assert metric(g.metrics_url, "owc_request_duration_seconds_count", route="/v1/chat/completions") == n0 + 1
    assert metric(g.metrics_url, "owc_requests_total", tenant="team-a", code="200") >= 1
    assert metric(g.metrics_url, "owc_engine_replicas", model="fake-model") == 1
    assert metric(g.metrics_url, "owc_routing_decisions_total", model="fake-model", policy="affinity") >= 1
    # With one replica the picker has nothing to choose; the filters ran.
    assert metric(g.metrics_url, "owc_routing_plugin_seconds_count", plugin="filter:healthy") == filters0 + 1
    assert metric(g.metrics_url, "owc_routing_plugin_seconds_count", plugin="picker:max_score") == picks0


def test_tenant_rate_limit_is_a_429_with_retry_after(stack):
    g, _ = stack
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    codes = [post(g.url, body, key="sk-limited") for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 429, 429]
    err = codes[1].json()["error"]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "rate_limit_error"
    assert int(codes[1].headers["retry-after"]) >= 1
    # OpenAI's rate-limit headers on the answer and on the refusal (1 a minute: the bucket refills in ~60 s)
    for r in codes[:2]:
        assert (r.headers["x-ratelimit-limit-requests"], r.headers["x-ratelimit-remaining-requests"]) == ("1", "0")
        reset = r.headers["x-ratelimit-reset-requests"]  # 60 s minus the time since the first: "59s" or so
        assert reset == "1m0s" or (reset.endswith("s") and 0 < int(reset[:-1]) < 60), reset
    assert "x-ratelimit-limit-tokens" not in codes[0].headers  # no token limit: no token headers
    assert metric(g.metrics_url, "owc_rejections_total", model="fake-model", reason="rate_limit_exceeded") == 2
    assert metric(g.metrics_url, "owc_requests_total", tenant="limited", code="429") == 2
    # Another tenant is not affected.
    assert post(g.url, body).status_code == 200


def test_access_log_lines(stack):
    g, log = stack
    r = post(g.url, {"model": "fake-model", "messages": [{"role": "user", "content": SECRET}], "max_tokens": 2},
             **{"x-request-id": "obs-log-1"})
    assert r.status_code == 200
    post(g.url, {"model": "nope", "messages": [{"role": "user", "content": SECRET}]})
    # A line is written once the request is finished, which can be just after the client has
    # its response: wait for both lines.
    deadline = time.time() + 10
    while time.time() < deadline and not ("obs-log-1" in log.read_text() and '"status":404' in log.read_text()):
        time.sleep(0.05)
    text = log.read_text()
    assert SECRET not in text, "prompt text logged without include_prompts"
    rows = [json.loads(line) for line in text.splitlines()]
    row = next(x for x in rows if x["request_id"] == "obs-log-1")
    assert row["tenant"] == "team-a" and row["model"] == "fake-model" and row["status"] == 200
    assert row["completion_tokens"] == 2 and row["prompt_tokens"] >= 1 and row["latency_s"] > 0
    assert row["replica"] and row["ts"].endswith("+00:00") and "prompt" not in row
    assert any(x["status"] == 404 and x["model"] == "unknown" for x in rows)


@pytest.mark.parametrize("clock", [[0.0], [1796620107.4567, 1796620107.9999996, 1796620108.0004, 1796620108.0005],
                                   [1.9995, 1.0005, 59.999, 86399.9999999, 951782400.25]])
def test_access_log_timestamps_are_isoformat_milliseconds(clock):
    """The line's ts (its date and time formatted once a second) is datetime's isoformat of the
    clock, to the millisecond, on second boundaries and the microsecond rounding too."""
    from datetime import datetime, timezone

    buf, times = io.BytesIO(), iter(clock)
    log = AccessLog(AccessLogConfig(), stream=buf, clock=lambda: next(times))
    for _ in clock:
        log.write({"request_id": "r"})
    log.flush()
    got = [json.loads(line)["ts"] for line in buf.getvalue().splitlines()]
    assert got == [datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds") for t in clock]


def test_access_log_includes_prompts_only_when_enabled():
    buf = io.BytesIO()
    log = AccessLog(AccessLogConfig(include_prompts=True), stream=buf, clock=lambda: 0.0)
    assert log.include_prompts
    log.write({"request_id": "r", "prompt": prompt_of({"messages": [{"role": "user", "content": SECRET}]})})
    log.flush()
    row = json.loads(buf.getvalue())
    assert row["ts"] == "1970-01-01T00:00:00.000+00:00" and row["prompt"][0]["content"] == SECRET
    assert prompt_of({"prompt": "p"}) == "p"


def test_traces_continue_the_callers_trace(stack, collector):
    g, _ = stack
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    r = post(g.url, {"model": "fake-model", "messages": [{"role": "user", "content": "trace me"}], "max_tokens": 2},
             traceparent=f"00-{trace_id}-{parent}-01", **{"x-request-id": "obs-trace-1"})
    assert r.status_code == 200
    deadline = time.time() + 10
    mine = []
    while time.time() < deadline:
        mine = [s for s in collector.spans() if s.trace_id.hex() == trace_id]
        if len(mine) >= 2:
            break
        time.sleep(0.1)
    by_name = {s.name: s for s in mine}
    assert set(by_name) == {"POST /v1/chat/completions", "engine.generate"}, [s.name for s in mine]
    srv, eng = by_name["POST /v1/chat/completions"], by_name["engine.generate"]
    assert srv.parent_span_id.hex() == parent
    assert eng.parent_span_id == srv.span_id
    attrs = {a.key: a.value for a in srv.attributes}
    assert attrs["owc.request_id"].string_value == "obs-trace-1"
    assert attrs["http.response.status_code"].int_value == 200
    assert attrs["gen_ai.usage.output_tokens"].int_value == 2
    service = {a.key: a.value.string_value for r in collector.requests for rs in r.resource_spans for a in rs.resource.attributes}
    assert service["service.name"] == "owc-gateway-test"


@pytest.mark.parametrize("strip", [True, False])
def test_whole_answer_in_one_read_still_counts_ttft_and_usage(strip):
    """A fast engine's events can reach the gateway in one read, usage event included."""
    from cluster.gateway.context import Delivery
    from cluster.gateway.stream.final_events import take_usage

    events = b'data: {"choices":[{"text":"a"}]}\n\ndata: {"choices":[{"text":"b"}]}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    outcome = Delivery()
    chunk, tokens = take_usage(events + usage + b"data: [DONE]\n\n", outcome, strip=strip)
    assert tokens and (outcome.prompt_tokens, outcome.completion_tokens) == (3, 2)
    assert chunk == (events + b"data: [DONE]\n\n" if strip else events + usage + b"data: [DONE]\n\n")
    _, tokens = take_usage(usage, Delivery(), strip=False)
    assert not tokens
