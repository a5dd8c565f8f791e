"""Signals for the capacity policies, read with PromQL over Prometheus's HTTP API: now
(``read``) and over a past window (``history``, ``query_range``: what a new leader
rebuilds its windows from).

Gateway metrics carry the served model as `model`, vLLM's as `model_name` (docs/metrics.md).
A query that returns nothing (or NaN) leaves its signal None; the policy holds when the
load signal itself is missing or older than its staleness bound. The gateway processes'
own signals (key ``owc-gateway``) are over every process: requests in flight less those
its fair queue holds, per process (``instance``: one scrape target per gateway process),
summed; and the worst event-loop lag.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import httpx

from cluster.capacity.gateway_policy import GATEWAY, GatewaySignals
from cluster.capacity.policy import ARRIVAL_WINDOW_S, Signals


def queries(model: str) -> dict[str, str]:
    g, v = f'model="{model}"', f'model_name="{model}"'
    return {
        "ongoing": f"sum(owc_requests_in_flight{{{g}}})",
        "ongoing_at": f"max(timestamp(owc_requests_in_flight{{{g}}}))",
        "queue": f"sum(vllm:num_requests_waiting{{{v}}})",
        "kv_usage": f"avg(vllm:kv_cache_usage_perc{{{v}}})",
        "ttft_p95_s": f"histogram_quantile(0.95, sum by (le) (rate(owc_time_to_first_token_seconds_bucket{{{g}}}[1m])))",
        "tokens_per_s": f"sum(rate(vllm:generation_tokens_total{{{v}}}[1m]))",
        "request_rate": rate(g, "1m"),
        # burst sizing's short window (5 s scrapes: three samples).
        "arrival_rate": rate(g, f"{ARRIVAL_WINDOW_S:g}s"),
        # The batch backlog: lines the gateways hold for the model, not answered yet (waiting for an
        # idle slot or running); never load (batch lines are not in owc_requests_in_flight), only
        # the budget batch_max_replicas. 0 while no batch runs (the gauge exists from the start).
        "batch_queue": f"sum(owc_batch_lines_waiting{{{g}}})",
    }


def rate(g: str, window: str) -> str:
    """Requests per second into the gateways for a model: 0, not nothing, while a gateway
    exports the model (its in-flight gauge, created at 0) and no request was counted yet
    (owc_requests_total has no series before its first); nothing while no gateway does."""
    return f"(sum(rate(owc_requests_total{{{g}}}[{window}])) or sum(owc_requests_in_flight{{{g}}}) * 0)"


def gateway_queries() -> dict[str, str]:
    held = "sum by (instance) (owc_fair_queue_depth)"
    flight = "sum by (instance) (owc_requests_in_flight)"
    return {
        # a process without fair-queue series holds none (`or` its in-flight times 0)
        "in_flight": f"sum(clamp_min({flight} - ({held} or {flight} * 0), 0))",
        "in_flight_at": "max(timestamp(owc_requests_in_flight))",
        "loop_lag_s": "max(owc_event_loop_lag_seconds)",
    }


def _queries(key: str) -> tuple[dict[str, str], str, Callable[..., Any]]:
    if key == GATEWAY:
        return gateway_queries(), "in_flight_at", GatewaySignals
    return queries(key), "ongoing_at", Signals


def _number(v: Any) -> float | None:
    value = float(v)
    return None if math.isnan(value) or math.isinf(value) else value


class PrometheusSignals:
    def __init__(self, url: str, *, client: httpx.Client | None = None, clock: Callable[[], float] = time.time):
        self._url = url.rstrip("/")
        self._client = client or httpx.Client(timeout=10)
        self._clock = clock

    def _api(self, path: str, params: dict) -> list:
        r = self._client.get(f"{self._url}/api/v1/{path}", params=params)
        r.raise_for_status()
        body = r.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus query failed: {body}")
        return body["data"]["result"]

    def query(self, promql: str) -> float | None:
        result = self._api("query", {"query": promql})
        return _number(result[0]["value"][1]) if result else None

    def query_range(self, promql: str, start: float, end: float, step: float) -> dict[float, float]:
        """``{t: value}`` at each step with a value (a single series: the queries aggregate)."""
        result = self._api("query_range", {"query": promql, "start": start, "end": end, "step": step})
        out: dict[float, float] = {}
        for t, v in (result[0]["values"] if result else []):
            if (x := _number(v)) is not None:
                out[round(float(t), 3)] = x
        return out

    def read(self, key: str) -> Signals | GatewaySignals | None:
        """A model's signals, or the gateway processes' (key ``owc-gateway``). None when
        Prometheus cannot be reached: the policy holds."""
        qs, at_name, kind = _queries(key)
        try:
            v = {name: self.query(q) for name, q in qs.items()}
        except (httpx.HTTPError, RuntimeError, ValueError, KeyError, IndexError):
            return None
        at = v.pop(at_name)
        return kind(at=at if at is not None else float("-inf"), **v)

    def history(self, key: str, start: float, end: float, step: float) -> list[tuple[float, Any]] | None:
        """``[(t, signals as evaluated at t)]`` for every step from ``start`` to ``end``
        (signals None where a series had no value); None when Prometheus cannot be reached."""
        qs, at_name, kind = _queries(key)
        try:
            series = {name: self.query_range(q, start, end, step) for name, q in qs.items()}
        except (httpx.HTTPError, RuntimeError, ValueError, KeyError, IndexError, TypeError):
            return None
        stamps = sorted(series[at_name])
        out = []
        for t in stamps:
            at = series[at_name][t]
            out.append((t, kind(at=at, **{n: s.get(t) for n, s in series.items() if n != at_name})))
        return out
