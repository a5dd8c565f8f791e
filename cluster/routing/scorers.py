"""Scorers rate each candidate replica in [0, 1]; the router sums them with the configured
weights. Each is a pure function of the views and the request."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cluster.routing.hashing import bounded_home, ranking
from cluster.routing.types import ReplicaView, RequestInfo

Scorer = Callable[[Sequence[ReplicaView], RequestInfo], list[float]]


def least_load(views: Sequence[ReplicaView], req: RequestInfo) -> list[float]:
    """Fewer requests on the replica (queued + running, see ReplicaView.load) is better."""
    return [1.0 / (1.0 + v.load) for v in views]


def kv_cache(views: Sequence[ReplicaView], req: RequestInfo) -> list[float]:
    """More free KV cache is better; unknown (stale stats) is neutral."""
    return [0.5 if v.stats is None else 1.0 - min(1.0, max(0.0, v.stats.kv_usage)) for v in views]


# lora_affinity's tiers, by what the request's adapter finds on the replica: in use there or
# idle in one of its batch slots (no swap); an empty slot; a slot held by an idle adapter (a
# swap, which evicts an adapter likely to come back); every slot held by adapters in use
# (the request waits for their batches to drain, or starves: vLLM schedules later requests of
# the running adapters ahead of it).
LORA_READY, LORA_EMPTY_SLOT, LORA_EVICTS, LORA_FULL = 1.0, 0.9, 0.45, 0.0


def lora_slots(view: ReplicaView) -> int:
    """How many adapters one batch on the replica may hold: the engine's max_loras, else 1
    (the cautious reading until the engine's first LoRA request reports it)."""
    return view.stats.max_loras if view.stats is not None and view.stats.max_loras else 1


def lora_tier(view: ReplicaView, adapter: str) -> float:
    active = view.active_adapters
    if adapter in active:
        return LORA_READY
    slots = lora_slots(view)
    if len(active) >= slots:
        return LORA_FULL
    resident = view.stats.resident_adapters if view.stats is not None else frozenset()
    if adapter in resident:
        return LORA_READY
    return LORA_EMPTY_SLOT if len(active | resident) < slots else LORA_EVICTS


def lora_affinity(views: Sequence[ReplicaView], req: RequestInfo) -> list[float]:
    """Where the request's LoRA adapter can join a batch without a swap (after the Gateway
    API Inference Extension's LoRA affinity): replicas running or queueing it (vLLM's
    ``vllm:lora_requests_info``, and this gateway's own requests since the last scrape) or
    holding it idle in a batch slot, then those with an empty slot, then those where it
    would evict an idle adapter, last those whose ``max_loras`` slots are all in use by other
    adapters. Registered or not does not count here (the ``adapter_loaded`` filter prefers the
    replicas that list it). Neutral for requests without an adapter."""
    if req.adapter is None:
        return [0.0] * len(views)
    return [lora_tier(v, req.adapter) for v in views]


def session_affinity(views: Sequence[ReplicaView], req: RequestInfo) -> list[float]:
    """The session's home: its first choice by rendezvous hashing among the candidates, so
    it fails over to its next choice when the home is filtered out (dead, draining)."""
    scores = [0.0] * len(views)
    if req.session_key and views:
        scores[ranking(req.session_key.encode(), [v.replica_id for v in views])[0]] = 1.0
    return scores


def prefix_affinity(bounded_load: float) -> Scorer:
    """The prompt prefix's home by rendezvous hashing, bounded load: a home holding more
    than ``bounded_load`` x the mean load spills to the key's next choice."""

    def prefix_affinity(views: Sequence[ReplicaView], req: RequestInfo) -> list[float]:
        scores = [0.0] * len(views)
        if req.prefix_key and views:
            home = bounded_home(req.prefix_key, [v.replica_id for v in views], [v.load for v in views], bounded_load)
            scores[home] = 1.0
        return scores

    return prefix_affinity
