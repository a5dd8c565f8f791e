"""The fair queue's dispatch across gateway processes: per process, or while a model is hot
on the counts every process shares (cluster.gateway.flowcontrol.shared), and the ticker. Pure:
no I/O of its own (the store is behind the injected Peers), no HTTP library."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from cluster.gateway.flowcontrol.fair_order import FairOrder
from cluster.gateway.flowcontrol.preemption import Preemptible
from cluster.gateway.flowcontrol.shared import Counts, SharedSlots
from cluster.gateway.flowcontrol.slot_usage import SlotUsage

TICK_S = 0.02  # how often a model with waiters re-checks room that no release announced (other gateways, new replicas)


@dataclass
class ModelState:
    order: FairOrder = field(default_factory=FairOrder)
    in_flight: dict[str, int] = field(default_factory=dict)  # tenant -> its requests of this model holding a slot
    seen: dict[str, float] = field(default_factory=dict)  # tenant -> when it last sent a request of this model
    batch: int = 0  # batch lines of this model holding a slot (cluster.gateway.flowcontrol.batch_class)
    preemptible: Preemptible = field(default_factory=Preemptible)  # grants that may be taken back
    usage: SlotUsage = field(default_factory=SlotUsage)  # each tenant's slots held on average


class SharedDispatch:
    """FairQueue's dispatch (cluster.gateway.flowcontrol.fair_queue): who gets the next freed
    slot, decided per process or, while a model is hot and a shared store answers, on the
    counts of every gateway process (cluster.gateway.flowcontrol.shared); and the ticker that
    hands out room no release of this process announced. Relies on FairQueue's state
    (``_models``, ``_shared``, ``_endpoints``, ``_routing``, ``_policy``, ``_clock``) and its
    ``_pass``/``_next`` (the grants themselves)."""

    _models: dict[str, ModelState]
    _shared: SharedSlots | None
    _ticker: asyncio.Task | None
    _tasks: set[asyncio.Task]  # exchanges under way (kept: the loop holds tasks weakly)
    _closed: bool = False  # the queue is closing: no new exchange

    def _dispatch(self, model: str) -> None:
        st = self._models[model]
        sh = self._shared
        if sh is None or not st.order or not sh.hot(model):
            self._pass(model, st, None)
            return
        share = sh.share(model)
        if not share.busy and self._next(model, st, share.view) is not None:
            share.busy = True
            self._spawn(self._shared_pass(model, st))

    async def _shared_pass(self, model: str, st: ModelState) -> None:
        """Saturated: each grant decided on the counts of every process, one exchange before it
        (the tenant the cached view admits claimed meanwhile); none while no one is admitted."""
        sh = self._shared
        assert sh is not None
        try:
            while (tenant := self._next(model, st, sh.share(model).view)) is not None:
                view = await sh.exchange(model, lambda: self._mine(model, st), claim=tenant)
                if not self._pass(model, st, view, once=view is not None):
                    break
        finally:
            sh.share(model).busy = False
        self._after(model, st)  # not when cancelled (the queue closing)

    # -- the other gateway processes ------------------------------------------------------------

    def _active(self, st: ModelState) -> list[str]:
        horizon = self._clock() - self._policy.active_window_s
        return [t for t, at in st.seen.items() if at >= horizon]

    def _view(self, model: str) -> Counts | None:
        """The last shared view of the other processes while the model is hot, else None."""
        sh = self._shared
        return sh.share(model).view if sh is not None and sh.hot(model) else None

    def _mine(self, model: str, st: ModelState) -> Counts:
        replicas = {e.replica_id: n for e in self._endpoints(model) if (n := self._routing.in_flight(e.replica_id))}
        assert self._shared is not None
        active, now = self._active(st), self._clock()
        usage = {t: st.usage.average(t, st.in_flight.get(t, 0), now) for t in {*active, *st.in_flight}}
        return self._shared.mine(model, st.in_flight, active, replicas, usage=usage,
                                 revocable=st.preemptible.tenants)

    def _spawn(self, coro) -> None:
        if self._closed:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _publish_soon(self, model: str, st: ModelState) -> None:
        assert self._shared is not None
        self._shared.share(model).queued = True  # until it starts: no second one meanwhile
        self._spawn(self._publish(model, st))

    async def _publish(self, model: str, st: ModelState) -> None:
        """One exchange without a grant (a poll, a release published, a refresh, a notice
        heard); then the waiters, if any, on the fresh view."""
        sh = self._shared
        assert sh is not None
        share = sh.share(model)
        share.queued = False
        if share.busy:  # a pass started meanwhile: its end publishes (``_after``), and looks again if nudged
            share.nudged = True
            return
        share.busy = True
        try:
            await sh.exchange(model, lambda: self._mine(model, st))
        finally:
            share.busy = False
        if st.order:
            self._dispatch(model)
        self._after(model, st)

    def _after(self, model: str, st: ModelState) -> None:
        """An exchange here is over (and the grants it allowed made): releases here that no grant
        took go out now with their notice (another process may be waiting for the room); else,
        if another process's notice came meanwhile and requests still wait, the counts again."""
        sh = self._shared
        assert sh is not None
        share = sh.share(model)
        if share.busy or share.queued:
            return
        if share.unannounced and sh.hot(model):
            share.nudged = False
            self._publish_soon(model, st)
        elif share.nudged:
            share.nudged = False
            if st.order:
                self._publish_soon(model, st)

    def _freed(self, model: str) -> None:
        """Another process released slots of ``model`` (its notice): requests waiting here look
        at the counts at once (one exchange, then the grants as ever), not at the next poll."""
        st = self._models.get(model)
        if st is None or not st.order or self._shared is None:
            return
        share = self._shared.share(model)
        if share.busy:
            share.nudged = True  # the exchange under way may have been read before that release
        elif not share.queued:  # (a queued one starts after this notice: it reads the room)
            self._publish_soon(model, st)

    def _release(self, model: str, st: ModelState) -> None:
        """This process released a slot of a hot model and no grant here took it: the release
        goes out now with its notice, not at the next tick (``_after``; an exchange under way or
        queued sends it when it ends)."""
        if self._shared is not None:
            self._after(model, st)

    # -- room nobody announced ------------------------------------------------------------------

    def _start_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def _wake(self) -> None:
        """The ticker started once a model this process holds requests or active tenants of
        looks saturated (a scrape landed), so that the others see them without a new request.
        Each such model's capacity is computed on every scrape, the ticker running or not: a
        running ticker about to end (the model no longer hot at its last look) would otherwise
        end without seeing the saturation this scrape shows."""
        running = self._ticker is not None and not self._ticker.done()
        for model, st in list(self._models.items()):
            if st.in_flight or self._active(st):
                self.capacity(model, self._endpoints(model), self._view(model))  # hot or not, as of this scrape
                if not running and self._ticking(model, st):
                    self._start_ticker()
                    running = True

    def _ticking(self, model: str, st: ModelState) -> bool:
        sh = self._shared
        return bool(st.order) or (sh is not None and sh.hot(model) and bool(st.in_flight or self._active(st)))

    async def _tick(self) -> None:
        """While anything waits: room freed by other gateways or new replicas (no release of
        this gateway's announces it) is handed out within a tick. While a model is hot with the
        shared view: the others' counts polled, this process's published (shared.SharedSlots.due)."""
        while any(self._ticking(m, st) for m, st in self._models.items()):
            await asyncio.sleep(TICK_S)
            for model, st in list(self._models.items()):
                sh = self._shared
                if sh is not None and self._ticking(model, st):
                    self.capacity(model, self._endpoints(model), self._view(model))  # still saturated?
                    holding = bool(st.in_flight or self._active(st))
                    share = sh.share(model)
                    if not (share.busy or share.queued) and sh.due(model, waiting=bool(st.order), holding=holding):
                        self._publish_soon(model, st)
                        continue
                if st.order:
                    self._dispatch(model)

