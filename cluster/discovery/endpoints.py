"""Engine replica endpoints: who serves which model where. Pure data + a table with TTLs.

Replicas register their own OpenAI URL and heartbeat through their health checks; the
gateway reads snapshots off the request path. An entry not refreshed within its TTL drops
out (its replica is dead or hung), never an error.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    model: str
    replica_id: str
    url: str
    # Being removed by a scale-down: takes no new requests, finishes its in-flight ones.
    draining: bool = False
    # Which version of the model it serves: stable, or the candidate of a rollout (docs/rollouts.md).
    version: str = "stable"


class EndpointTable:
    def __init__(self, ttl_s: float):
        self._ttl_s = ttl_s
        self._entries: dict[tuple[str, str], tuple[Endpoint, float]] = {}

    def register(self, ep: Endpoint, now: float) -> None:
        self._entries[(ep.model, ep.replica_id)] = (ep, now)

    def heartbeat(self, model: str, replica_id: str, now: float) -> bool:
        key = (model, replica_id)
        if key not in self._entries:
            return False
        self._entries[key] = (self._entries[key][0], now)
        return True

    def drain(self, model: str, replica_id: str) -> bool:
        """Mark a replica as leaving: still listed (its requests finish), routed no more."""
        key = (model, replica_id)
        if key not in self._entries:
            return False
        ep, seen = self._entries[key]
        self._entries[key] = (Endpoint(ep.model, ep.replica_id, ep.url, draining=True, version=ep.version), seen)
        return True

    def deregister(self, model: str, replica_id: str) -> None:
        self._entries.pop((model, replica_id), None)

    def snapshot(self, now: float) -> list[Endpoint]:
        """Live endpoints; expired ones are dropped."""
        expired = [k for k, (_, seen) in self._entries.items() if now - seen > self._ttl_s]
        for k in expired:
            del self._entries[k]
        return sorted((ep for ep, _ in self._entries.values()), key=lambda e: (e.model, e.replica_id))
