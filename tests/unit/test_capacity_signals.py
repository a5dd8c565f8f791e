"""The controller's PromQL for the gateway processes, evaluated by promtool on synthetic
series (the fair queue's held requests do not count; a process without fair-queue series
holds none; the worst loop lag; no lag series, no lag signal), and how PrometheusSignals
reads instant and range answers (Prometheus's HTTP API, served by httpx's MockTransport)."""

from __future__ import annotations

import subprocess

import httpx
import pytest
import yaml

from cluster.capacity.gateway_policy import GATEWAY, GatewaySignals
from cluster.capacity.policy import Signals
from cluster.capacity.signals import PrometheusSignals, gateway_queries, queries
from tests.tools import tool

SERIES = [
    # gateway process a: 10 + 5 in flight, 8 of them held by its fair queue -> works on 7
    ('owc_requests_in_flight{instance="10.0.0.1:9100", model="m1"}', "10 10 10"),
    ('owc_requests_in_flight{instance="10.0.0.1:9100", model="m2"}', "5 5 5"),
    ('owc_fair_queue_depth{instance="10.0.0.1:9100", model="m1", tenant="t1"}', "6 6 6"),
    ('owc_fair_queue_depth{instance="10.0.0.1:9100", model="m1", tenant="t2"}', "2 2 2"),
    # process b: no fair-queue series at all -> all 4 count
    ('owc_requests_in_flight{instance="10.0.0.2:9100", model="m1"}', "4 4 4"),
    ('owc_event_loop_lag_seconds{instance="10.0.0.1:9100"}', "0.01 0.01 0.01"),
    ('owc_event_loop_lag_seconds{instance="10.0.0.2:9100"}', "0.002 0.2 0.002"),
]


def promtool_test(tmp_path, series, exprs):
    tests = [{"expr": e, "eval_time": t, "exp_samples": [{"labels": "{}", "value": v}] if v is not None else []}
             for e, t, v in exprs]
    path = tmp_path / "signals_test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "15s", "tests": [{
        "interval": "15s", "input_series": [{"series": s, "values": v} for s, v in series],
        "promql_expr_test": tests}]}))
    r = subprocess.run([tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_gateway_queries_on_synthetic_series(tmp_path):
    q = gateway_queries()
    promtool_test(tmp_path, SERIES, [
        (q["in_flight"], "30s", 11),  # 7 + 4: the 8 held for engines are not the gateways' work
        (q["loop_lag_s"], "0s", 0.01),
        (q["loop_lag_s"], "15s", 0.2),  # the worst process
        (q["in_flight_at"], "30s", 30),
    ])


def test_gateway_queries_without_fair_queue_or_lag_series(tmp_path):
    q = gateway_queries()
    only_flight = [s for s in SERIES if s[0].startswith("owc_requests_in_flight")]
    promtool_test(tmp_path, only_flight, [
        (q["in_flight"], "30s", 19),
        (q["loop_lag_s"], "30s", None),  # no series: no lag signal (None), not 0
    ])
    # a fair queue momentarily over the in-flight count (scrape skew) never makes it negative
    promtool_test(tmp_path, [('owc_requests_in_flight{instance="a:1", model="m"}', "2"),
                             ('owc_fair_queue_depth{instance="a:1", model="m", tenant="t"}', "3")],
                  [(q["in_flight"], "0s", 0)])


def test_engine_queries_are_per_model(tmp_path):
    promtool_test(tmp_path, SERIES, [(queries("m1")["ongoing"], "30s", 14)])


def prometheus(answers):
    """A Prometheus HTTP API answering each query from ``answers`` (by PromQL)."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        q = request.url.params["query"]
        seen.append((request.url.path, dict(request.url.params)))
        a = answers.get(q)
        if request.url.path.endswith("/query_range"):
            result = [{"metric": {}, "values": a}] if a else []
            return httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix", "result": result}})
        result = [{"metric": {}, "value": [1000, a]}] if a is not None else []
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": result}})

    return PrometheusSignals("http://prom:9090", client=httpx.Client(transport=httpx.MockTransport(handler))), seen


def test_read_gateway_signals():
    q = gateway_queries()
    sig, _ = prometheus({q["in_flight"]: "11", q["in_flight_at"]: "995.5", q["loop_lag_s"]: "0.2"})
    assert sig.read(GATEWAY) == GatewaySignals(at=995.5, in_flight=11.0, loop_lag_s=0.2)
    sig, _ = prometheus({q["in_flight"]: "11", q["in_flight_at"]: "995.5"})
    assert sig.read(GATEWAY) == GatewaySignals(at=995.5, in_flight=11.0, loop_lag_s=None)
    sig, _ = prometheus({q["in_flight"]: "NaN"})
    assert sig.read(GATEWAY) == GatewaySignals(at=float("-inf"), in_flight=None, loop_lag_s=None)


def test_history_is_one_signals_per_step_with_a_fresh_sample():
    q = queries("m")
    sig, seen = prometheus({
        q["ongoing"]: [[900, "3"], [915, "2"], [930, "1"], [945, "0"]],
        q["ongoing_at"]: [[900, "898"], [915, "913"], [945, "944"]],  # no sample at 930: a gap
        q["queue"]: [[900, "0"], [945, "1"]],
    })
    hist = sig.history("m", 900, 945, 15)
    assert [t for t, _ in hist] == [900, 915, 945]
    assert hist[0] == (900, Signals(at=898, ongoing=3, queue=0))
    assert hist[2][1].queue == 1 and hist[2][1].ongoing == 0 and hist[2][1].ttft_p95_s is None
    assert all(path.endswith("/query_range") and p["step"] == "15" for path, p in seen)


def test_history_unreachable_is_none():
    def down(request):
        raise httpx.ConnectError("refused")

    sig = PrometheusSignals("http://prom:9090", client=httpx.Client(transport=httpx.MockTransport(down)))
    assert sig.history(GATEWAY, 0, 60, 15) is None and sig.read(GATEWAY) is None


@pytest.mark.parametrize("key, kind", [(GATEWAY, GatewaySignals), ("m", Signals)])
def test_history_kind_follows_the_key(key, kind):
    qs = gateway_queries() if key == GATEWAY else queries(key)
    at = "in_flight_at" if key == GATEWAY else "ongoing_at"
    sig, _ = prometheus({q: [[60, "1"]] for q in qs.values()} | {qs[at]: [[60, "59"]]})
    ((t, s),) = sig.history(key, 0, 60, 15)
    assert t == 60 and isinstance(s, kind) and s.at == 59


def test_burst_sizing_reads_the_arrival_rate_over_its_window():
    q = queries("m")
    assert q["arrival_rate"].startswith('(sum(rate(owc_requests_total{model="m"}[15s]))')
    sig, _ = prometheus({q["ongoing"]: "4", q["ongoing_at"]: "995", q["arrival_rate"]: "42.5"})
    assert sig.read("m").arrival_rate == 42.5


def test_request_rates_are_zero_before_the_first_request_and_missing_without_a_gateway(tmp_path):
    """A gateway exports a model's in-flight gauge at 0 from its start; its request counter has
    no series until the first request. The rates read 0 then (burst sizing and the standing
    headroom act from the first decision), and nothing while no gateway exports the model."""
    q = queries("m")
    idle = [('owc_requests_in_flight{instance="a:1", model="m"}', "0 0 0 0 0")]
    busy = idle + [('owc_requests_total{instance="a:1", model="m", route="chat", status="200", tenant="t"}',
                    "0 150 300 450 600")]
    for name in ("arrival_rate", "request_rate"):
        promtool_test(tmp_path, idle, [(q[name], "60s", 0)])
        promtool_test(tmp_path, busy, [(q[name], "60s", 10)])
        promtool_test(tmp_path, [('owc_requests_in_flight{instance="a:1", model="other"}', "0 0 0 0 0")],
                      [(q[name], "60s", None)])
