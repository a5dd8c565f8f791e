"""The gateway's own metrics (`owc_` prefix) on an injected registry. Engine metrics are
not re-exported here: they keep vLLM's names on each replica's own /metrics.

docs/metrics.md is the contract (name, type, labels, meaning); a test keeps it and this
module in agreement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# 10 ms ... 60 s: request latency and TTFT. Inter-token latency adds finer low buckets
# (a token every 2-20 ms is normal on GPUs).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, *LATENCY_BUCKETS)
REJECTION_REASONS = ("rate_limit_exceeded", "concurrency_limit_exceeded", "no_healthy_replica")
RETRY_REASONS = ("connect_refused",)
DECISION_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry, *, replicas: Callable[[], Iterable[tuple[str, int]]] | None = None):
        self.requests = Counter(
            "owc_requests",
            "Requests finished by the gateway, by served model, tenant, route and HTTP status.",
            ["model", "tenant", "route", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "owc_request_duration_seconds",
            "Time from request received to last byte sent, by served model and route.",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "owc_time_to_first_token_seconds",
            "Streamed requests: time from request received to the first token event relayed.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            "owc_inter_token_latency_seconds",
            "Streamed requests: time between successive token events relayed.",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "owc_prompt_tokens",
            "Prompt tokens of finished requests (engine-reported usage), by model and tenant.",
            ["model", "tenant"],
            registry=registry,
        )
        self.completion_tokens = Counter(
            "owc_completion_tokens",
            "Completion tokens of finished requests (engine-reported usage), by model and tenant.",
            ["model", "tenant"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "owc_requests_in_flight",
            "Requests the gateway is handling now (admitted, not finished), by served model.",
            ["model"],
            registry=registry,
        )
        self.queued = Gauge(
            "owc_requests_queued",
            "Admitted requests no engine replica has answered yet (connecting or awaiting response headers).",
            ["model"],
            registry=registry,
        )
        self.rejections = Counter(
            "owc_rejections",
            "Requests refused before reaching an engine (429/503), by model and reason.",
            ["model", "reason"],
            registry=registry,
        )
        self.retries = Counter(
            "owc_retries",
            "Requests re-sent to another replica, invisibly to the client, by model and reason.",
            ["model", "reason"],
            registry=registry,
        )
        self.decisions = Counter(
            "owc_routing_decisions",
            "Replica choices made, by model and routing policy.",
            ["model", "policy"],
            registry=registry,
        )
        self.decision_seconds = Histogram(
            "owc_routing_decision_seconds",
            "Time one routing decision took, by routing policy.",
            ["policy"],
            buckets=DECISION_BUCKETS,
            registry=registry,
        )
        if replicas is not None:
            registry.register(_ReplicaCollector(replicas))

    def init_models(self, models: Iterable[str], policy: str) -> None:
        """Create each model's labelled series at 0, so that rates and alerts see them
        before the first event (a retry or rejection may never have happened yet)."""
        for m in models:
            for reason in REJECTION_REASONS:
                self.rejections.labels(m, reason)
            for reason in RETRY_REASONS:
                self.retries.labels(m, reason)
            self.decisions.labels(m, policy)
            self.in_flight.labels(m)
            self.queued.labels(m)


class _ReplicaCollector(Collector):
    """owc_engine_replicas, read from the endpoint source at scrape time."""

    def __init__(self, replicas: Callable[[], Iterable[tuple[str, int]]]):
        self._replicas = replicas

    def collect(self):
        g = GaugeMetricFamily(
            "owc_engine_replicas", "Engine replicas the gateway can route to now, by served model.", labels=["model"]
        )
        for model, n in self._replicas():
            g.add_metric([model], n)
        yield g
