"""The gateway's own metrics (`owc_` prefix) on an injected registry. Engine metrics are
not re-exported here: they keep vLLM's names on each replica's own /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter(
            "owc_requests",
            "Requests finished by the gateway, by served model, tenant, route and HTTP status.",
            ["model", "tenant", "route", "code"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "owc_requests_in_flight",
            "Requests the gateway is relaying now, by served model.",
            ["model"],
            registry=registry,
            multiprocess_mode="livesum",
        )
