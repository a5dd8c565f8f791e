"""The gateway's own queue in front of each model's engines: fair sharing under saturation.

vLLM's waiting queue is first come, first served, so whoever sends most gets most. The
gateway therefore sends each replica at most what it can run at once plus a small margin
(``dispatch_margin``) and holds the rest here, handing freed engine slots out in fair order
(cluster.gateway.flowcontrol.fair_order: a higher tenant ``priority`` first, tenants of a class by
``weight``). A request waits at most ``max_wait_s`` (then 429 ``queue_full``), a tenant's
backlog is bounded on its own (``max_queued_per_tenant``), and a client that leaves is
taken out of the queue at once.

What a replica can run: its model's ``max_num_seqs`` from engine_kwargs, else learned from
its scraped state (the engine's running count while it had a queue). What it runs now:
this gateway's requests on it, plus the other gateways' as the last scrape showed them (the
engine's running + waiting minus what this gateway had on it at that scrape). A tenant's
fair share is of the slots the other gateways do not hold, so that behind a balancer (each
gateway seeing its part of every tenant's requests) the headroom holds for the lighter
tenant across gateways too. Per gateway process: each one's view of the others is one
scrape old, and a tenant active on one gateway only is not seen by the others. Hence, where
a shared store is given (``shared``), the counts of every gateway process while a model is
saturated (cluster.gateway.flowcontrol.shared): shares, headroom and room are then of every
process's requests, one store round trip old; the store down or slow, per process as above.

With nothing queued and room on a replica a request goes straight through: one pass over
the model's replicas, no await. Requests pinned to one replica (a stored response's owner)
never wait here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cluster.config.auth import TenantConfig
from cluster.config.gateway import FairSharing
from cluster.discovery.endpoints import Endpoint
from cluster.gateway.context import ClientGone, Receive, wait_disconnect
from cluster.gateway.errors import RETRY_SOON, OpenAIError
from cluster.gateway.flowcontrol.batch_class import BatchSlots
from cluster.gateway.flowcontrol.batch_pacer import BatchPacer
from cluster.gateway.flowcontrol.capacity import Capacity, learn_capacity, others_on
from cluster.gateway.flowcontrol.preemption import TakeBack
from cluster.gateway.flowcontrol.shared import Counts, SharedSlots
from cluster.gateway.flowcontrol.shared_dispatch import ModelState, SharedDispatch
from cluster.gateway.flowcontrol.shares import Shares
from cluster.gateway.flowcontrol.slot_usage import TAU_S, SlotUsage
from cluster.gateway.observability.children import Children, observe
from cluster.gateway.observability.metrics import GatewayMetrics
from cluster.routing.router import Routing

# Chooses a replica among ``endpoints`` less ``exclude`` and takes it (Routing.acquire);
# raises OpenAIError when none can be chosen.
Pick = Callable[[Sequence[Endpoint], frozenset[str]], Endpoint]


@dataclass(eq=False)
class _Waiter:
    pick: Pick
    give_back: Callable[[Endpoint], None]
    future: asyncio.Future
    since: float
    revocable: bool = False  # its slot can be taken back until it answers (a non-streamed request)


class FairQueue(Shares, SharedDispatch, BatchSlots, TakeBack):
    def __init__(
        self, *, policy: FairSharing, tenants: Mapping[str, TenantConfig], max_num_seqs: Mapping[str, int | None],
        routing: Routing, endpoints: Callable[[str], list[Endpoint]], metrics: GatewayMetrics,
        clock: Callable[[], float] = time.monotonic, shared: SharedSlots | None = None, batch_unknown_limit: int = 2,
        batch_keep_free: float = 0.0, batch_pacer: BatchPacer | None = None,
    ):
        """``max_num_seqs``: each model's configured engine batch (None: learn each replica's
        from its scrapes); ``shared``: the other gateway processes' counts while a model is hot."""
        self._policy = policy
        self._tenants = tenants
        self._configured = dict(max_num_seqs)
        self._routing = routing
        self._endpoints = endpoints
        self._metrics = metrics
        self._child = Children()  # label sets looked up once (the request path)
        self._clock = clock
        self._shared = shared
        self.batch_unknown_limit = batch_unknown_limit  # batch lines per process on a replica of unknown capacity
        self.batch_keep_free = batch_keep_free  # share of a model's slots batch lines leave free
        self.batch_pacer = batch_pacer  # batch lines as the interactive TTFTs allow (None: slots only)
        self._models: dict[str, ModelState] = {}
        self._learned: dict[str, int] = {}  # replica id -> capacity learned from scrapes
        self._theirs: dict[str, int] = {}  # replica id -> the other gateways' requests on it at the last scrape
        self._ticker: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        if shared is not None:
            shared.on_freed = self._freed  # another process's release: waiting requests look again at once

    def _model_state(self) -> ModelState:
        return ModelState(usage=SlotUsage(self._policy.credit_window_s or TAU_S))

    @property
    def enabled(self) -> bool:
        return self._policy.enabled

    # -- what the replicas can take ---------------------------------------------------------

    def scraped(self, replica_id: str) -> None:
        """A scrape of the replica just landed (the stats poller calls this): the other
        gateways' requests on it, and what it can run at once where no config says."""
        own = self._routing.in_flight(replica_id)
        stats = self._routing.stats.latest(replica_id)
        if stats is not None:
            self._theirs[replica_id] = others_on(stats, own)
            learned = learn_capacity(self._learned.get(replica_id), stats, probe=not self._policy.dispatch_margin)
            if learned is not None:
                self._learned[replica_id] = learned
        if self._shared is not None:
            self._wake()  # saturated now: this process's counts (its active tenants) go to the others

    def slots(self, model: str, replica_id: str) -> int | None:
        """Requests the replica runs at once (its max_num_seqs, configured or learned from
        scrapes); None: not known yet."""
        configured = self._configured.get(model)
        return configured if configured is not None else self._learned.get(replica_id)

    def capacity(self, model: str, endpoints: Sequence[Endpoint], view: Counts | None = None) -> Capacity:
        """Each routable replica's requests from all gateways (this one's, plus the others':
        ``view``'s, the shared counts, else as the last scrape showed them) against its batch."""
        rows, own, others, unbounded, routable = [], 0, 0, False, 0  # rows: [load, batch, replica id]
        for v in self._routing.views(endpoints):
            if v.endpoint.draining or not v.healthy:
                continue
            routable += 1
            batch = self.slots(model, v.replica_id)
            if batch is None:
                unbounded = True
                continue
            theirs = 0
            if view is not None:
                theirs = int(view.replicas.get(v.replica_id, 0))
            elif v.stats is not None:
                theirs = self._theirs.get(v.replica_id, others_on(v.stats, v.in_flight))
            own += v.in_flight
            others += theirs
            rows.append([v.in_flight + theirs, batch, v.replica_id])
        for _ in range(view.pending if view is not None and rows else 0):  # the others' grants being decided:
            min(rows)[0] += 1  # on the least loaded replicas, as routing would place them
            others += 1
        at_limit = {r for load, batch, r in rows if load >= batch + self._policy.dispatch_margin}
        busy = {r for load, batch, r in rows if load >= batch}
        free, total = sum(max(0, batch - load) for load, batch, _ in rows), sum(batch for _, batch, _ in rows)
        if self._shared is not None:
            self._shared.observe(model, free, total, not unbounded)
        return Capacity(frozenset(at_limit), frozenset(busy), free, total, own, others, unbounded, routable, view)

    def _admits(self, st: ModelState, cap: Capacity, tenant: str, revocable: bool = False) -> frozenset[str] | None:
        """The replicas to exclude for the tenant's next request; None: it may not go now.
        ``revocable``: a request whose slot can be taken back (preemption on) may take the
        headroom too: a lighter tenant's request then takes that slot back."""
        if cap.unbounded or cap.routable == 0:
            return cap.at_limit
        if len(cap.at_limit) >= cap.routable:
            return None
        if self._policy.headroom and self.over_share(st, tenant, cap):
            # Over its share: only into a free running slot, never the last ``headroom``, and of
            # the slots beyond those only this gateway's part (its part of the model's load): the
            # other gateways see the same free slots until their next scrape (with the shared view,
            # until their next exchange: all of them).
            part = cap.own / (cap.own + cap.others) if cap.others and cap.view is None else 1.0
            # A request whose slot can be taken back may take the headroom too; with other processes
            # only where this one holds no more of the tenant's requests that can be taken back than
            # the one holding fewest, or each of the others holds ``headroom`` of them already: each
            # holds some to take back (a request can only take back its own process's).
            spread = cap.view is None or \
                min(st.preemptible.tenants.get(tenant, 0), self._policy.headroom) <= cap.view.least.get(tenant, 0)
            headroom = 0 if revocable and self._policy.preempt and spread else self._policy.headroom
            return cap.busy if (cap.free - headroom) * part >= 1 else None
        return cap.at_limit

    # -- the queue ----------------------------------------------------------------------------

    async def slot(self, model: str, tenant: str, endpoints: Sequence[Endpoint], pick: Pick, receive: Receive,
                   *, give_back: Callable[[Endpoint], None], pinned: bool = False, again: bool = False,
                   revocable: bool = False) -> Endpoint:
        """A replica for the request, taken by ``pick`` once it has room; meanwhile the request
        waits its fair turn. Raises OpenAIError (429 queue_full, or routing's answer) or
        ClientGone (a replica already picked for it is then given back with ``give_back``).
        Every slot returned is given back with ``finished``. ``again``: the request's slot was
        taken back (cluster.gateway.flowcontrol.preemption): it waits at the head of its tenant's
        queue. ``revocable``: its slot can be taken back until it answers (it may use the headroom)."""
        st = self._models.get(model)
        if st is None:
            st = self._models[model] = self._model_state()
        now = self._clock()
        last = st.seen.get(tenant)
        if last is None:
            self._depth(model, st, tenant)  # its depth series exists (at 0) from its first request
        if last is None or now - last > self._policy.active_window_s:
            st.usage.joined(tenant, now)  # active from now (credit: cluster.gateway.flowcontrol.slot_usage)
        st.seen[tenant] = now
        if not self._policy.enabled or pinned:
            return self._granted(st, tenant, pick(endpoints, frozenset()))
        if not st.order:
            cap = self.capacity(model, endpoints, self._view(model))
            exclude = self._admits(st, cap, tenant, revocable)
            if exclude is not None and self._shared is not None and self._shared.hot(model):
                self._start_ticker()  # saturated: the decision again on the counts of every process, one round trip
                view = await self._shared.exchange(model, lambda: self._mine(model, st), claim=tenant)
                cap = self.capacity(model, endpoints, view)
                exclude = None if st.order else self._admits(st, cap, tenant, revocable)
            if exclude is not None:
                observe(self._child(self._metrics.fair_wait, model, tenant), 0.0)
                ep = self._granted(st, tenant, pick(endpoints, exclude))
                self._take_back(model, st, tenant, ep.replica_id, cap)
                return ep
        return await self._wait(model, st, tenant, _Waiter(pick, give_back, asyncio.get_running_loop().create_future(),
                                                          self._clock(), revocable), receive, front=again)

    def _granted(self, st: ModelState, tenant: str, ep: Endpoint) -> Endpoint:
        held = st.in_flight.get(tenant, 0)
        st.usage.held(tenant, held, self._clock())
        st.in_flight[tenant] = held + 1
        return ep

    def finished(self, model: str, tenant: str) -> None:
        """A request ``slot`` gave a replica to is over."""
        st = self._models[model]
        if self._shared is not None:
            self._shared.released(model)
        held = st.in_flight.get(tenant, 0)
        st.usage.held(tenant, held, self._clock())
        left = held - 1
        if left > 0:
            st.in_flight[tenant] = left
        else:
            st.in_flight.pop(tenant, None)
        if st.order:
            self._dispatch(model)
        self._release(model, st)

    async def _wait(self, model: str, st: ModelState, tenant: str, waiter: _Waiter, receive: Receive, *,
                    front: bool = False) -> Endpoint:
        p = self._policy
        if st.order.depth(tenant) >= p.max_queued_per_tenant:
            raise self._refusal(f"tenant '{tenant}' has {p.max_queued_per_tenant} requests waiting for {model}")
        if len(st.order) >= p.max_queued:
            victim = st.order.newest_of_longest()
            if victim is None or victim[0] == tenant or st.order.depth(victim[0]) <= st.order.depth(tenant) + 1:
                raise self._refusal(f"{p.max_queued} requests are waiting for {model}")
            st.order.remove(*victim)
            self._depth(model, st, victim[0])
            victim[1].future.set_exception(self._refusal(f"{p.max_queued} requests are waiting for {model}"))
        cfg = self._tenants.get(tenant)
        st.order.push(tenant, waiter, weight=cfg.weight if cfg else 1.0, priority=cfg.priority if cfg else 0,
                      front=front)
        self._depth(model, st, tenant)
        self._dispatch(model)
        if not waiter.future.done():
            self._start_ticker()
            self._take_back(model, st, tenant, None, self.capacity(model, self._endpoints(model), self._view(model)))
        gone = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await asyncio.wait({waiter.future, gone}, timeout=p.max_wait_s, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._abandon(model, st, tenant, waiter)
            raise
        finally:
            gone.cancel()
        if waiter.future.done() and not gone.done():
            return waiter.future.result()  # raises a refusal set by the dispatcher
        self._abandon(model, st, tenant, waiter)
        if gone.done():
            raise ClientGone()
        raise self._refusal(f"no engine slot for {model} within {p.max_wait_s:g}s")

    def _abandon(self, model: str, st: ModelState, tenant: str, waiter: _Waiter) -> None:
        """The waiter leaves: out of the queue, or, if a replica was already taken for it, that
        replica given back."""
        if st.order.remove(tenant, waiter):
            self._depth(model, st, tenant)
        elif waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
            waiter.give_back(waiter.future.result())
            self.released(model)
            self.finished(model, tenant)

    def released(self, model: str) -> None:
        """A request of ``model`` left a replica (done, or off to a retry): the next waiter may go."""
        st = self._models.get(model)
        if st is not None and st.order:
            self._dispatch(model)

    def _candidates(self, model: str, st: ModelState, view: Counts | None):
        """(endpoints, admits, exclusions, capacity) for the next grant; None while no replica has room."""
        endpoints = self._endpoints(model)
        cap = self.capacity(model, endpoints, view)
        if not cap.room:
            return None
        excluded: dict[str, frozenset[str] | None] = {}

        def admits(tenant: str) -> bool:
            if tenant not in excluded:
                excluded[tenant] = self._admits(st, cap, tenant, st.order.head(tenant).revocable)
            return excluded[tenant] is not None

        return endpoints, admits, excluded, cap

    def _next(self, model: str, st: ModelState, view: Counts | None) -> str | None:
        """The tenant the next grant would go to (no I/O, nothing taken)."""
        c = self._candidates(model, st, view)
        got = st.order.peek(c[1]) if c is not None else None
        return got[0] if got is not None else None

    def _pass(self, model: str, st: ModelState, view: Counts | None, *, once: bool = False) -> int:
        """Grant waiters in fair order while there is room (one at most with ``once``)."""
        granted = 0
        while st.order and (c := self._candidates(model, st, view)) is not None:
            endpoints, admits, excluded, cap = c
            got = st.order.pop(admits)
            if got is None:
                break
            tenant, waiter = got
            self._depth(model, st, tenant)
            self._metrics.fair_wait.labels(model, tenant).observe(self._clock() - waiter.since)
            granted += 1
            try:
                ep = self._granted(st, tenant, waiter.pick(endpoints, excluded[tenant]))
                waiter.future.set_result(ep)
                self._take_back(model, st, tenant, ep.replica_id, cap)
            except Exception as err:  # routing's refusal (or a bug): that request's answer, not the releaser's
                waiter.future.set_exception(err)
            if once:
                break
        if granted and self._shared is not None:
            self._shared.granted(model, granted)  # the releases these took need no notice
        return granted

    def _depth(self, model: str, st: ModelState, tenant: str) -> None:
        self._metrics.fair_depth.labels(model, tenant).set(st.order.depth(tenant))

    def _refusal(self, why: str) -> OpenAIError:
        return OpenAIError(429, f"{why}; retry shortly", code="queue_full", headers=RETRY_SOON)

    async def close(self) -> None:
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._shared is not None:
            await self._shared.peers.close()
