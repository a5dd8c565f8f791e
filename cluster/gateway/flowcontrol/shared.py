"""The other gateway processes' requests on a model, shared while the model is saturated.

Each gateway process's fair queue sees its own requests exactly and, without this, the other
processes' only through the engines' scrapes (one scrape, 0.25 s, old; and a tenant that
sends through one process only is not seen by the others). While a model is saturated
(``hot``: its free slots at or under ``headroom + dispatch_margin``, held for ``HOT_HOLD_S``)
each process publishes its own counts of the model (per tenant: requests holding a slot,
0 for a tenant active within ``active_window_s``; per replica: requests on it; ``*``: grants
it is deciding on) and reads the others' summed, in one exchange with a shared store
(``Peers``, injected: cluster.tenancy.slot_share on Redis). The store keeps a process's
counts for a short TTL only, so a dead process's counts expire.

When the exchanges happen: before each grant while the model is hot (the grant's tenant
counted in ``*`` meanwhile, so that two processes deciding at once see each other's claim);
after a release, at once (``notify``: the exchange that publishes it tells the other processes,
and one whose requests wait for a slot exchanges at once to find that room: ``on_freed``),
else within a tick; while requests wait, at most every ``POLL_S`` (room no notice announced:
a store that denies pub/sub, ``notify`` off); and every ``REFRESH_S`` while this process holds
requests or active tenants of a hot model. Never while no model is saturated, never per
streamed token. No view (the store down or slow): the fair queue decides as one process
does, from the scrapes. Pure: no I/O here, no HTTP library.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

HOT_HOLD_S = 1.0  # a model stays hot this long after it last looked saturated (scrapes swing)
POLL_S = 0.1  # while requests wait: the others' counts read at most this often (room they freed)
REFRESH_S = 0.5  # this process's counts re-published at least this often while hot (the store's TTL is longer)
PENDING = "*"  # replica field of grants being decided (not yet on a replica)


@dataclass(frozen=True)
class Counts:
    """Requests of one model holding (or being granted) engine slots."""

    tenants: Mapping[str, int] = field(default_factory=dict)  # tenant -> requests (0: active, none holding)
    replicas: Mapping[str, int] = field(default_factory=dict)  # replica id (or PENDING) -> requests
    # tenant -> the fewest requests that can still be taken back (preemption) one other process holds
    least: Mapping[str, int] = field(default_factory=dict)
    usage: Mapping[str, float] = field(default_factory=dict)  # tenant -> slots held on average (slot_usage)
    revocable: Mapping[str, int] = field(default_factory=dict)  # tenant -> its requests that can be taken back

    def fields(self) -> dict[str, int]:
        """Flat integer fields (the store sums them over processes): the averages in thousandths."""
        return {**{"t:" + t: n for t, n in self.tenants.items()}, **{"r:" + r: n for r, n in self.replicas.items()},
                **{"u:" + t: round(1000 * a) for t, a in self.usage.items() if a >= 0.0005},
                **{"v:" + t: n for t, n in self.revocable.items() if n}}

    @classmethod
    def from_fields(cls, flat: Mapping[str, int]) -> Counts:
        tenants = {k[2:]: int(v) for k, v in flat.items() if k.startswith("t:")}
        return cls(tenants, {k[2:]: int(v) for k, v in flat.items() if k.startswith("r:")},
                   {k[4:]: int(v) for k, v in flat.items() if k.startswith("l:v:")},
                   {k[2:]: int(v) / 1000 for k, v in flat.items() if k.startswith("u:")},
                   {k[2:]: int(v) for k, v in flat.items() if k.startswith("v:")})

    @property
    def pending(self) -> int:
        return int(self.replicas.get(PENDING, 0))


class Peers(Protocol):
    async def exchange(self, model: str, mine: Mapping[str, int], notify: bool = False) -> Mapping[str, int] | None:
        """Publish this process's counts of ``model`` (``Counts.fields``); the other live
        processes' fields summed, or None when there is no shared view now (the store down or
        slower than its bound). ``notify``: the counts carry a release; tell the others."""

    def listen(self, model: str, on_freed: Callable[[str], None]) -> None:
        """From now on, ``on_freed(model)`` when another process publishes a release of ``model``."""

    async def close(self) -> None: ...


@dataclass
class _Share:
    hot_until: float = 0.0
    claims: dict[str, int] = field(default_factory=dict)  # tenant -> grants being decided
    view: Counts | None = None  # the others' counts at the last exchange
    synced: float = -math.inf  # when that exchange was sent
    dirty: bool = False  # a release since it, not yet published
    busy: bool = False  # a dispatch pass waits on an exchange
    nudged: bool = False  # another process released slots while ``busy``: look again after it
    queued: bool = False  # an exchange without a grant is spawned and has not started yet
    unannounced: int = 0  # releases here no local grant took and no notice told yet
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one exchange of the model at a time
    listening: bool = False  # this process hears the model's release notices
    started: int = 0  # exchanges started
    finished: int = 0  # the number of the last one finished


class SharedSlots:
    """Per model: whether it is hot, this process's pending claims, the last view of the others."""

    def __init__(self, peers: Peers, *, threshold: int, clock: Callable[[], float] = time.monotonic,
                 notify: bool = True):
        """``threshold``: free slots at or under which a model is saturated (headroom + margin);
        ``notify``: releases told to the other processes, theirs heard (``on_freed``)."""
        self.peers = peers
        self._threshold = threshold
        self._clock = clock
        self.notify = notify
        self.on_freed: Callable[[str], None] | None = None  # the fair queue's: another process released slots
        self._models: dict[str, _Share] = {}

    def share(self, model: str) -> _Share:
        s = self._models.get(model)
        if s is None:
            s = self._models[model] = _Share()
        return s

    def observe(self, model: str, free: int, total: int, bounded: bool) -> bool:
        """Record what one capacity computation showed; True while the model is hot."""
        s, now = self.share(model), self._clock()
        if bounded and total > 0 and free <= self._threshold:
            s.hot_until = now + HOT_HOLD_S
        return now < s.hot_until

    def hot(self, model: str) -> bool:
        return self._clock() < self.share(model).hot_until

    def due(self, model: str, *, waiting: bool, holding: bool) -> bool:
        """An exchange is due without a grant: requests wait (poll), a release is unpublished,
        or the counts are getting old while this process holds some."""
        s = self.share(model)
        if not self.hot(model):
            return False
        age = self._clock() - s.synced
        return (waiting and age >= POLL_S) or s.dirty or (holding and age >= REFRESH_S)

    def released(self, model: str) -> None:
        s = self._models.get(model)
        if s is not None and self.hot(model):
            s.dirty = True
            s.unannounced += self.notify

    def granted(self, model: str, n: int) -> None:
        """A dispatch pass here granted ``n`` waiting requests: releases they took need no notice."""
        s = self._models.get(model)
        if s is not None and s.unannounced:
            s.unannounced = max(0, s.unannounced - n)

    async def exchange(self, model: str, mine: Callable[[], Counts], claim: str | None = None) -> Counts | None:
        """One round trip: this process's counts (``mine()``, with ``claim``'s grant pending)
        out, the others' in; None: decide alone. One exchange of a model at a time: callers that
        arrive meanwhile ride the next one (it carries their claims), so a burst costs two."""
        s = self.share(model)
        if claim is not None:
            s.claims[claim] = s.claims.get(claim, 0) + 1
        after = s.started  # an exchange numbered above this one started after the claim was counted
        try:
            async with s.lock:
                if s.finished > after:
                    return s.view
                if self.notify and not s.listening and self.on_freed is not None:
                    s.listening = True  # the model's first exchange (it is hot): its notices from now on
                    try:
                        self.peers.listen(model, self._heard)
                    except Exception:  # a bug in the adapter: no notices, the polls as before
                        log.exception("listening for %s's release notices", model)
                s.started += 1
                number = s.started
                # Releases no grant here took go out with a notice; a grant's exchange tells none (its
                # pass takes the room, or hands what it leaves to ``unannounced``: fair_queue's _pass).
                notify = self.notify and claim is None and s.unannounced > 0
                if notify:
                    s.unannounced = 0
                s.dirty, s.synced = False, self._clock()
                try:
                    theirs = await self.peers.exchange(model, mine().fields(), notify)
                    s.view = None if theirs is None else Counts.from_fields(theirs)
                except Exception:  # the adapter reports its failures; a bug there must not fail the request
                    s.view = None
                s.finished = number
                return s.view
        finally:
            if claim is not None:
                left = s.claims[claim] - 1
                if left:
                    s.claims[claim] = left
                else:
                    del s.claims[claim]

    def _heard(self, model: str) -> None:
        if self.on_freed is not None and model in self._models and self.notify:
            self.on_freed(model)

    def mine(self, model: str, in_flight: Mapping[str, int], active: list[str],
             replicas: Mapping[str, int], *, usage: Mapping[str, float] | None = None,
             revocable: Mapping[str, int] | None = None) -> Counts:
        """This process's counts: its tenants' requests plus pending claims, its active tenants
        at 0, its requests per replica, its claims as PENDING, its tenants' average slots held,
        its tenants' requests that can still be taken back."""
        claims = self.share(model).claims
        tenants = {t: 0 for t in active}
        for src in (in_flight, claims):
            for t, n in src.items():
                tenants[t] = tenants.get(t, 0) + n
        pending = sum(claims.values())
        return Counts(tenants, {**replicas, **({PENDING: pending} if pending else {})}, usage=dict(usage or {}),
                      revocable=dict(revocable or {}))
