"""Batch lines (cluster.batch.runner) as a priority class below every interactive one: a line
takes an engine slot only when no interactive request of its model waits in this process and
the model's free running slots, counted over every gateway process as the fair queue sees them
(the shared view while the model is hot, else one scrape old), stay above the headroom; it
never queues in the fair order, so an interactive arrival never waits behind it; and no more
lines than the interactive requests' TTFT allows (cluster.gateway.flowcontrol.batch_pacer). While a
replica's capacity is not known, a small fixed number of lines per process. Pure: the rule is a
function of one Capacity; the mixin polls it (no I/O, no HTTP library)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence

from cluster.discovery.endpoints import Endpoint
from cluster.gateway.errors import OpenAIError
from cluster.gateway.flowcontrol.batch_pacer import BatchPacer
from cluster.gateway.flowcontrol.capacity import Capacity
from cluster.gateway.flowcontrol.shared_dispatch import ModelState
from cluster.gateway.observability.metrics import GatewayMetrics

POLL_S = 0.05  # how often a waiting batch line looks for idle room again


def batch_admits(cap: Capacity, *, headroom: int, interactive_waiting: bool, batch_here: int,
                 unknown_limit: int, keep_free: float = 0.0, paced: int | None = None) -> frozenset[str] | None:
    """The replicas to exclude for the next batch line; None: it waits. Free running slots kept
    for interactive arrivals: ``headroom``, or ``keep_free`` of the model's slots if more, at
    least one; ``batch_here``: this process's batch lines of the model now; ``paced``: the most
    this process may run now as the interactive TTFTs allow (cluster.gateway.flowcontrol.batch_pacer)."""
    if interactive_waiting or cap.routable == 0 or (paced is not None and batch_here >= paced):
        return None
    if cap.unbounded:
        return cap.at_limit if batch_here < unknown_limit else None
    if cap.free - max(1, headroom, math.ceil(keep_free * cap.total)) >= 1:
        return cap.busy  # only into a free running slot
    return None


class BatchSlots:
    """FairQueue's batch class (cluster.gateway.flowcontrol.fair_queue); relies on its
    ``_models``, ``_policy``, ``_endpoints``, ``_metrics``, ``capacity`` and ``_view``."""

    _models: dict[str, ModelState]
    _metrics: GatewayMetrics
    batch_unknown_limit: int = 2
    batch_keep_free: float = 0.0
    batch_pacer: BatchPacer | None = None

    async def batch_slot(self, model: str, pick: Callable[[Sequence[Endpoint], frozenset[str]], Endpoint]) -> Endpoint:
        """A replica for a batch line, taken by ``pick`` once the model has idle room; waits
        (polling, one line of the model at a time: the others wait their turn behind it) until
        then, and while no replica is routable. Given back with ``batch_finished``."""
        st = self._models.get(model)
        if st is None:
            st = self._models[model] = self._model_state()
        locks = self.__dict__.setdefault("_batch_turns", {})
        async with locks.setdefault(model, asyncio.Lock()):  # one waiting line per model polls; the others queue
            return await self._batch_wait(model, st, pick)

    async def _batch_wait(self, model: str, st: ModelState, pick) -> Endpoint:
        while True:
            endpoints = self._endpoints(model)
            cap = self.capacity(model, endpoints, self._view(model))
            paced = None if self.batch_pacer is None else self.batch_pacer.limit(model, st.batch)
            if paced is not None:
                self._metrics.batch_paced.labels(model).set(paced)
            exclude = batch_admits(cap, headroom=self._policy.headroom, interactive_waiting=bool(st.order),
                                   batch_here=st.batch, unknown_limit=self.batch_unknown_limit,
                                   keep_free=self.batch_keep_free, paced=paced)
            if exclude is not None:
                try:
                    ep = pick(endpoints, exclude)
                except OpenAIError:  # no replica right now: wait, as for room
                    ep = None
                if ep is not None:
                    st.batch += 1
                    return ep
            await asyncio.sleep(POLL_S)

    def batch_finished(self, model: str) -> None:
        st = self._models[model]
        st.batch = max(0, st.batch - 1)
        if st.order:
            self._dispatch(model)
