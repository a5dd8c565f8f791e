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


def lora_affinity(views: Sequence[ReplicaView], req: RequestInfo) -> list[float]:
    """Replicas with the request's adapter already loaded (no load on the request path)."""
    if req.adapter is None:
        return [0.0] * len(views)
    return [1.0 if v.stats is not None and req.adapter in v.stats.adapters else 0.0 for v in views]


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
