"""The Batch API as the gateway app wires it: the service over the shared Redis (batch.store_url,
else gateway.store's, else the fair-sharing store `owc serve` starts) or in process, and the
periodic sweep of expired files and overdue batches, started and stopped with the app."""

from __future__ import annotations

import logging
import os

from cluster.batch.service import BatchService, build_service
from cluster.config.schema import OwcConfig
from cluster.periodic import Periodic

log = logging.getLogger(__name__)


def store_url(config: OwcConfig) -> str | None:
    store = config.gateway.store
    shared = store and ((os.environ.get(store.url_env) if store.url_env else None) or store.url)
    return config.batch.store_url or shared or config.gateway.fair_sharing.store_url


class Batches:
    def __init__(self, service: BatchService, *, sweep_period_s: float):
        self.service = service
        self._sweep = Periodic(service.sweep, period_s=sweep_period_s, what="batch sweep", log=log)

    async def start(self) -> None:
        self._sweep.start()

    async def stop(self) -> None:
        await self._sweep.stop()
        await self.service.close()


def build_batches(config: OwcConfig) -> Batches | None:
    """None when the Batch API is off (its routes then answer 404)."""
    if not config.batch.enabled:
        return None
    return Batches(build_service(config.batch, store_url=store_url(config)), sweep_period_s=config.batch.sweep_period_s)
