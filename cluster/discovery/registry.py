"""The replica registry as a Ray Serve deployment: engine replicas register their own
OpenAI URL and heartbeat from their health checks; gateway replicas poll snapshots.
It holds soft state only: after a restart every live replica re-registers within one
health-check period."""

from __future__ import annotations

import time

from ray import serve

from cluster.discovery.endpoints import Endpoint, EndpointTable
from cluster.discovery.timing import HEALTH_CHECK_PERIOD_S, HEARTBEAT_TTL_S


@serve.deployment(
    name="owc-registry",
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    health_check_period_s=HEALTH_CHECK_PERIOD_S,
    max_ongoing_requests=1000,
)
class EndpointRegistry:
    def __init__(self) -> None:
        self._table = EndpointTable(ttl_s=HEARTBEAT_TTL_S)

    def register(self, model: str, replica_id: str, url: str, version: str = "stable") -> None:
        self._table.register(Endpoint(model=model, replica_id=replica_id, url=url, version=version), time.monotonic())

    def heartbeat(self, model: str, replica_id: str, url: str, version: str = "stable") -> None:
        if not self._table.heartbeat(model, replica_id, time.monotonic()):
            self.register(model, replica_id, url, version)

    def drain(self, model: str, replica_id: str) -> None:
        self._table.drain(model, replica_id)

    def deregister(self, model: str, replica_id: str) -> None:
        self._table.deregister(model, replica_id)

    def snapshot(self) -> list[Endpoint]:
        return self._table.snapshot(time.monotonic())
