"""What a routing decision sees: one view per candidate replica and the request's keys.
Pure data; the plugins (filters, scorers, pickers) are pure functions of it."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.discovery.endpoints import Endpoint


@dataclass(frozen=True)
class ReplicaStats:
    """One replica's engine state, scraped from its own /metrics (vLLM's names) off the
    request path."""

    waiting: float = 0.0  # vllm:num_requests_waiting
    running: float = 0.0  # vllm:num_requests_running
    kv_usage: float = 0.0  # vllm:kv_cache_usage_perc, in [0, 1]
    adapters: frozenset[str] = frozenset()  # LoRA adapters the engine has loaded


@dataclass(frozen=True)
class ReplicaView:
    endpoint: Endpoint
    in_flight: int = 0  # this gateway's own requests on the replica now
    stats: ReplicaStats | None = None  # None: unknown or stale -> load-blind on engine state
    healthy: bool = True

    @property
    def replica_id(self) -> str:
        return self.endpoint.replica_id

    @property
    def load(self) -> float:
        """Requests on the replica: the engine's own count (all gateways), or this gateway's
        in-flight when that is higher (requests sent since the last scrape) or the only view."""
        if self.stats is None:
            return float(self.in_flight)
        return max(self.stats.waiting + self.stats.running, float(self.in_flight))

    @property
    def queue(self) -> float | None:
        """Requests waiting in the engine's queue; None when unknown (stale stats)."""
        if self.stats is None:
            return None
        return max(self.stats.waiting, self.in_flight - self.stats.running)


@dataclass(frozen=True)
class RequestInfo:
    """The keys of one request that routing may use."""

    model: str
    prefix_key: bytes = b""  # the prompt's leading text, after a canonical chat rendering
    session_key: str | None = None  # x-session-id header, else the `user` field
    adapter: str | None = None  # LoRA adapter requested
