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

from cluster.metrics.buckets import ITL_BUCKETS, LATENCY_BUCKETS, TTFT_BUCKETS

REJECTION_REASONS = ("rate_limit_exceeded", "concurrency_limit_exceeded", "insufficient_quota", "queue_full",
                     "no_healthy_replica")
# connect_refused: no connection to the replica; engine_lost: it closed or died before the
# first response byte. Either way the client had received nothing.
RETRY_REASONS = ("connect_refused", "engine_lost")
DECISION_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2)
# Why the connection bounds (cluster.gateway.edge.connections) closed or refused a connection.
CONNECTION_CLOSE_REASONS = ("header_timeout", "body_timeout", "header_too_large", "evicted", "over_capacity")
AUTH_FAILURE_CODES = ("missing_api_key", "invalid_api_key")
KEY_FILES = ("api_keys", "admin_keys", "jwks")
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PLUGIN_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3)


class GatewayMetrics:
    def __init__(
        self, registry: CollectorRegistry, *, replicas: Callable[[], Iterable[tuple[str, int, int]]] | None = None
    ):
        self.requests = Counter(
            "owc_requests",
            "Requests finished by the gateway, by served model, tenant, route and HTTP status.",
            ["model", "tenant", "route", "code", "version"],
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
            ["model", "version"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            "owc_inter_token_latency_seconds",
            "Streamed requests: time between successive token events relayed.",
            ["model", "version"],
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "owc_prompt_tokens",
            "Prompt tokens of finished requests (engine-reported usage), by model and tenant.",
            ["model", "tenant", "version"],
            registry=registry,
        )
        self.completion_tokens = Counter(
            "owc_completion_tokens",
            "Completion tokens of finished requests (engine-reported usage), by model and tenant.",
            ["model", "tenant", "version"],
            registry=registry,
        )
        self.reasoning_tokens = Counter(
            "owc_reasoning_tokens",
            "Reasoning tokens of finished requests (engine-reported usage; part of the completion tokens), "
            "by model and tenant.",
            ["model", "tenant", "version"],
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
        self.batch_in_flight = Gauge(
            "owc_batch_lines_in_flight",
            "Batch lines this gateway process is handling now (not in owc_requests_in_flight: a batch backlog does "
            "not scale engines up), by served model.",
            ["model"],
            registry=registry,
        )
        self.batch_waiting = Gauge(
            "owc_batch_lines_waiting",
            "Batch lines waiting for an idle engine slot or for the engine's answer, by served model.",
            ["model"],
            registry=registry,
        )
        self.batch_paced = Gauge(
            "owc_batch_lines_allowed",
            "Batch lines this gateway process may run on the model now as its interactive requests' TTFT allows "
            "(batch.ttft_tolerance; batch.lines_in_flight while no interactive request comes), by served model.",
            ["model"],
            registry=registry,
        )
        self.loop_lag = Gauge(
            "owc_event_loop_lag_seconds",
            "Worst lateness of this gateway process's event loop over the last 2 s (a 100 ms timer).",
            registry=registry,
        )
        self.fair_depth = Gauge(
            "owc_fair_queue_depth",
            "Requests waiting in this gateway's fair queue for an engine slot, by served model and tenant.",
            ["model", "tenant"],
            registry=registry,
        )
        self.fair_wait = Histogram(
            "owc_fair_queue_wait_seconds",
            "Time requests waited in the gateway's fair queue before an engine slot (0 when one was free), "
            "by served model and tenant.",
            ["model", "tenant"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        self.fair_preemptions = Counter(
            "owc_fair_preemptions_total",
            "Requests whose engine slot the fair queue took back (aborted before their first byte to the client, then "
            "sent again) for a tenant under its share, by served model and the tenant taken from.",
            ["model", "tenant"],
            registry=registry,
        )
        self.fair_share_up = Gauge(
            "owc_fair_share_store_up", "1 while this gateway process shares its fair-queue counts of saturated models "
            "with the others (gateway.fair_sharing.share_across_gateways), 0 while it decides alone (the store down, "
            "slow, or none). Set at each exchange: only while a model is saturated.", registry=registry,
        )
        self.fair_share_errors = Counter(
            "owc_fair_share_store_errors", "Exchanges of fair-queue counts with the shared store that failed "
            "(connection, timeout, error).", registry=registry,
        )
        self.fair_share_exchanges = Counter(
            "owc_fair_share_exchanges", "Exchanges of fair-queue counts with the shared store (round trips; only while "
            "a model is saturated).", registry=registry,
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
        self.mirror_dropped = Counter(
            "owc_rollout_mirror_dropped",
            "Mirror mode: copies for the candidate dropped because this gateway process's queue of pending copies "
            "of the model was full (docs/rollouts.md).",
            ["model"],
            registry=registry,
        )
        self.resumes = Counter(
            "owc_stream_resumes",
            "Streams whose engine broke after the first byte, by model and result: resumed (continued on "
            "another replica, the client saw one stream) or failed (no replica could continue it: the stream "
            "ended with an error event).",
            ["model", "result"],
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
        self.plugin_seconds = Histogram(
            "owc_routing_plugin_seconds",
            "Time one routing plugin (filter, scorer or picker) took in one decision, by plugin.",
            ["plugin"],
            buckets=PLUGIN_BUCKETS,
            registry=registry,
        )
        self.connections = Gauge(
            "owc_connections", "Client connections this gateway process holds now.", registry=registry,
        )
        self.connections_closed = Counter(
            "owc_connections_closed",
            "Client connections the gateway's bounds closed or refused, by reason (header_timeout, body_timeout, "
            "header_too_large, evicted: idle and closed for a new one, over_capacity: refused with 503).",
            ["reason"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "owc_auth_failures",
            "Failed authentications, by the 401's code and whether the client's address was over its failure "
            "budget (answered 429 instead).",
            ["code", "throttled"],
            registry=registry,
        )
        self.key_reloads = Counter(
            "owc_key_reloads", "Reloads of changed credential files, by file and result (ok, failed).",
            ["keys", "result"], registry=registry,
        )
        self.tenancy_store_up = Gauge(
            "owc_tenancy_store_up", "1 while this gateway reaches its shared tenancy store (Redis), 0 while it "
            "applies gateway.store.on_failure (and without a store).", registry=registry,
        )
        self.tenancy_store_errors = Counter(
            "owc_tenancy_store_errors", "Tenancy store calls that failed (connection, timeout, error).",
            registry=registry,
        )
        self.tenant_quota_used = Gauge(
            "owc_tenant_quota_used_ratio", "Share of a tenant's token quota used in the current period (day: UTC "
            "day, month: UTC month), as of its last request through this gateway.", ["tenant", "period"],
            registry=registry,
        )
        self.adapter_loads = Counter(
            "owc_adapter_loads", "LoRA adapter loads the gateway asked of engine replicas (admin API and on demand), "
            "by model and result (ok, failed).", ["model", "result"], registry=registry,
        )
        self.adapter_load_seconds = Histogram(
            "owc_adapter_load_seconds", "Time one adapter load on one replica took (ok or not), by model.",
            ["model"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=registry,
        )
        for reason in CONNECTION_CLOSE_REASONS:
            self.connections_closed.labels(reason)
        for keys in KEY_FILES:
            for result in ("ok", "failed"):
                self.key_reloads.labels(keys, result)
        for code in AUTH_FAILURE_CODES:
            for throttled in ("false", "true"):
                self.auth_failures.labels(code, throttled)
        if replicas is not None:
            registry.register(_ReplicaCollector(replicas))

    def auth_failed(self, code: str, throttled: bool) -> None:
        self.auth_failures.labels(code, "true" if throttled else "false").inc()

    def init_models(self, policies: dict[str, str], plugins: Iterable[str] = ()) -> None:
        """Create each model's labelled series at 0, so that rates and alerts see them
        before the first event (a retry or rejection may never have happened yet).
        ``policies``: model -> its routing policy label; ``plugins``: the routing plugins."""
        for plugin in plugins:
            self.plugin_seconds.labels(plugin)
        for m, policy in policies.items():
            for reason in REJECTION_REASONS:
                self.rejections.labels(m, reason)
            for reason in RETRY_REASONS:
                self.retries.labels(m, reason)
            for result in ("ok", "rejected", "failed"):
                self.adapter_loads.labels(m, result)
            for result in ("resumed", "failed"):
                self.resumes.labels(m, result)
            self.decisions.labels(m, policy)
            self.decision_seconds.labels(policy)
            self.in_flight.labels(m)
            self.queued.labels(m)
            self.batch_in_flight.labels(m)
            self.batch_waiting.labels(m)


class _ReplicaCollector(Collector):
    """owc_engine_replicas and owc_engine_replicas_routable, read at scrape time."""

    def __init__(self, replicas: Callable[[], Iterable[tuple[str, int, int]]]):
        self._replicas = replicas

    def collect(self):
        g = GaugeMetricFamily(
            "owc_engine_replicas", "Engine replicas registered for the served model (incl. unhealthy, draining).",
            labels=["model"],
        )
        r = GaugeMetricFamily(
            "owc_engine_replicas_routable",
            "Engine replicas taking new requests now: healthy as this gateway last saw them, not draining.",
            labels=["model"],
        )
        for model, n, routable in self._replicas():
            g.add_metric([model], n)
            r.add_metric([model], routable)
        yield g
        yield r
