"""A batch line settled by the gateway (cluster.gateway.observability.accounting): its tokens
count for its tenant, but it is not an interactive request: owc_requests_total, the request
duration, TTFT and ITL (the capacity controller's request rate, arrival rate and TTFT p95, and a
rollout's gates) see none of it; the access log names its batch and custom_id."""

from __future__ import annotations

import io
import json

from prometheus_client import CollectorRegistry

from cluster.gateway.context import Delivery
from cluster.config.schema import AccessLog as AccessLogConfig
from cluster.gateway.observability.access_log import AccessLog
from cluster.gateway.observability.accounting import Accounting, Settled
from cluster.gateway.observability.metrics import GatewayMetrics


class _Routing:
    def policy(self, model: str) -> str:
        return "p2c"


def _delivered() -> Delivery:
    d = Delivery()
    d.usage({"prompt_tokens": 5, "completion_tokens": 9})
    d.ttft_s = 0.25
    d.itl = [0.01, 0.02]
    return d


def _sum(registry: CollectorRegistry, name: str) -> float:
    return sum(s.value for m in registry.collect() for s in m.samples if s.name == name)


def test_a_batch_line_counts_tokens_but_no_interactive_request_rate_or_latency():
    registry = CollectorRegistry()
    buf = io.BytesIO()
    log = AccessLog(AccessLogConfig(), stream=buf, clock=lambda: 0.0)
    accounting = Accounting(metrics=GatewayMetrics(registry), routing=_Routing(), access_log=log)
    accounting.settle(Settled(request_id="r1", route="/v1/chat/completions", status=200, tenant="t", model="m"),
                      _delivered())
    interactive = {n: _sum(registry, n) for n in ("owc_requests_total", "owc_time_to_first_token_seconds_count",
                                                  "owc_inter_token_latency_seconds_count",
                                                  "owc_request_duration_seconds_count")}
    assert all(v > 0 for v in interactive.values()), interactive
    accounting.settle(Settled(request_id="r2", route="/v1/chat/completions", status=200, tenant="t", model="m",
                              batch=("batch_1", "line-7")), _delivered())
    assert {n: _sum(registry, n) for n in interactive} == interactive
    assert _sum(registry, "owc_completion_tokens_total") == 18 and _sum(registry, "owc_prompt_tokens_total") == 10
    log.flush()
    records = [json.loads(line) for line in buf.getvalue().decode().splitlines()]
    assert records[-1]["batch_id"] == "batch_1" and records[-1]["custom_id"] == "line-7"
