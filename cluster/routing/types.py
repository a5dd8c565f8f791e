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
    adapters: frozenset[str] = frozenset()  # LoRA adapters the engine has registered (its /v1/models)
    # From vllm:lora_requests_info (cluster.routing.stats): the adapters of the requests
    # running (or, once they ran, waiting) now; the engine's max_loras (adapters one batch may
    # hold; None: not known, no LoRA request yet or no such metric); the adapters in its batch
    # slots (the max_loras used last, idle or not).
    active_adapters: frozenset[str] = frozenset()
    max_loras: int | None = None
    resident_adapters: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ReplicaView:
    endpoint: Endpoint
    in_flight: int = 0  # this gateway's own requests on the replica now
    stats: ReplicaStats | None = None  # None: unknown or stale -> load-blind on engine state
    healthy: bool = True
    adapters_in_flight: frozenset[str] = frozenset()  # adapters of this gateway's requests on the replica now

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
        """Requests waiting in the engine's own queue, as its last scrape showed them; None when
        unknown (stale stats). Not this gateway's in-flight beyond the engine's running count:
        a burst sent since the scrape is mostly running by now (vLLM takes up to max_num_seqs),
        and the gateway's fair queue (cluster.gateway.flowcontrol.fair_queue) already bounds what it sends
        to a replica by what it runs plus a margin."""
        if self.stats is None:
            return None
        return self.stats.waiting

    @property
    def active_adapters(self) -> frozenset[str]:
        """Adapters running or queued on the replica: the engine's last word, and what this
        gateway has sent there since (a decision between two scrapes sees its own requests)."""
        return self.adapters_in_flight | (self.stats.active_adapters if self.stats is not None else frozenset())


@dataclass(frozen=True)
class RequestInfo:
    """The keys of one request that routing may use."""

    model: str
    prefix_key: bytes = b""  # the prompt's leading text, after a canonical chat rendering
    session_key: str | None = None  # x-session-id header, else the `user` field
    adapter: str | None = None  # LoRA adapter requested
