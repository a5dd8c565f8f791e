"""Choosing one replica for a request: the routing contract is replica stats in, replica
choice out. This is the serving core's default (least in-flight from this gateway's own
view, ties broken round-robin); the routing issue adds filters and scorers behind the
same call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cluster.routing.endpoints import Endpoint


@dataclass(frozen=True)
class ReplicaView:
    endpoint: Endpoint
    in_flight: int
    healthy: bool = True


class LeastInFlightPicker:
    name = "least_in_flight"

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, replicas: Sequence[ReplicaView], exclude: frozenset[str] = frozenset()) -> Endpoint | None:
        candidates = [r for r in replicas if r.healthy and r.endpoint.replica_id not in exclude]
        if not candidates:
            return None
        low = min(r.in_flight for r in candidates)
        tied = [r for r in candidates if r.in_flight == low]
        self._turn += 1
        return tied[self._turn % len(tied)].endpoint
