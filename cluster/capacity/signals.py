"""Signals for the capacity policy, read with PromQL over Prometheus's HTTP API.

Gateway metrics carry the served model as `model`, vLLM's as `model_name` (docs/metrics.md).
A query that returns nothing (or NaN) leaves its signal None; the policy holds when the
load signal itself is missing or older than its staleness bound.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import httpx

from cluster.capacity.policy import Signals


def queries(model: str) -> dict[str, str]:
    g, v = f'model="{model}"', f'model_name="{model}"'
    return {
        "ongoing": f"sum(owc_requests_in_flight{{{g}}})",
        "ongoing_at": f"max(timestamp(owc_requests_in_flight{{{g}}}))",
        "queue": f"sum(vllm:num_requests_waiting{{{v}}})",
        "kv_usage": f"avg(vllm:kv_cache_usage_perc{{{v}}})",
        "ttft_p95_s": f"histogram_quantile(0.95, sum by (le) (rate(owc_time_to_first_token_seconds_bucket{{{g}}}[1m])))",
        "tokens_per_s": f"sum(rate(vllm:generation_tokens_total{{{v}}}[1m]))",
        "request_rate": f"sum(rate(owc_requests_total{{{g}}}[1m]))",
    }


class PrometheusSignals:
    def __init__(self, url: str, *, client: httpx.Client | None = None, clock: Callable[[], float] = time.time):
        self._url = url.rstrip("/")
        self._client = client or httpx.Client(timeout=10)
        self._clock = clock

    def query(self, promql: str) -> float | None:
        r = self._client.get(f"{self._url}/api/v1/query", params={"query": promql})
        r.raise_for_status()
        body = r.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus query failed: {body}")
        result = body["data"]["result"]
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) or math.isinf(value) else value

    def read(self, model: str) -> Signals | None:
        """None when Prometheus cannot be reached: the policy holds."""
        try:
            v = {name: self.query(q) for name, q in queries(model).items()}
        except (httpx.HTTPError, RuntimeError, ValueError, KeyError):
            return None
        at = v.pop("ongoing_at")
        return Signals(at=at if at is not None else float("-inf"), **v)
