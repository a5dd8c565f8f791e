"""Filters narrow the candidate replicas. Each is a pure function of the views and the
request; ``queue_bound`` refuses the request (429) when every replica is past its bound."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cluster.routing.types import ReplicaView, RequestInfo


class QueueFull(Exception):
    """Every candidate replica's queue is at its bound."""


Filter = Callable[[Sequence[ReplicaView], RequestInfo], list[ReplicaView]]


def healthy(views: Sequence[ReplicaView], req: RequestInfo) -> list[ReplicaView]:
    return [v for v in views if v.healthy]


def not_draining(views: Sequence[ReplicaView], req: RequestInfo) -> list[ReplicaView]:
    return [v for v in views if not v.endpoint.draining]


def adapter_loaded(views: Sequence[ReplicaView], req: RequestInfo) -> list[ReplicaView]:
    """Replicas holding the request's LoRA adapter; all of them when none does (or their
    stats are unknown): any replica can load it on demand."""
    if req.adapter is None:
        return list(views)
    having = [v for v in views if v.stats is not None and req.adapter in v.stats.adapters]
    return having or list(views)


def queue_bound(max_queue: int) -> Filter:
    """Replicas whose engine queue is under ``max_queue``. Unknown queues (stale stats) pass:
    without data the gateway never refuses."""

    def queue_bound(views: Sequence[ReplicaView], req: RequestInfo) -> list[ReplicaView]:
        if not views:
            return []
        kept = [v for v in views if v.queue is None or v.queue < max_queue]
        if not kept:
            raise QueueFull(f"every replica of {req.model} has {max_queue} or more requests queued")
        return kept

    return queue_bound
