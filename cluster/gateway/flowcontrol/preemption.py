"""Preemption in the fair queue: a slot taken back from a tenant over its share.

Without it a tenant under its share that finds every engine slot busy waits in the engine's
queue until one of the flooding tenant's generations ends: the headroom covers a light
tenant's first requests, not a burst of them. With it, such a grant takes back the youngest
request of a tenant over its share on the same replica that has not answered its client yet
(a non-streamed request, or a stream before its first byte): its engine connection is closed
(vLLM aborts it at its next step, freeing the slot) and it waits again at the head of its
tenant's queue, to be sent once there is room. Its client sees nothing but a later answer;
the engine work it had done is lost, which is why the youngest goes (the least work), a
request is taken back once at most, and only for a tenant under its share of a class no
higher than the victim's (never for a tenant itself over its share). "Over its share" is the
fair queue's (cluster.gateway.flowcontrol.shares): the slots a tenant holds less its credit
for the part of its share it left unused over time, or plus its debt (its part of the others'
credits), so that a light tenant's burst takes slots back from a tenant that held more than
its share on average even while it holds less now.

Pure: no I/O, no clock; the fair queue (cluster.gateway.flowcontrol.fair_queue) decides when
and the forwarder registers what may be taken back and acts on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


class Preempted(Exception):
    """The request's slot was taken back before it answered its client: it waits again."""


@dataclass(eq=False)
class Grant:
    """A request holding an engine slot that may still be taken back."""

    tenant: str
    replica_id: str
    since: float
    abort: Callable[[], None]  # closes its engine connection (the forwarder's)
    preempted: bool = False


@dataclass
class Preemptible:
    """The grants of one model that may be taken back now, per replica."""

    grants: dict[str, dict[Grant, None]] = field(default_factory=dict)  # insertion-ordered sets: O(1) drop
    tenants: dict[str, int] = field(default_factory=dict)  # tenant -> its grants here (none: absent)

    def hold(self, grant: Grant) -> None:
        self.grants.setdefault(grant.replica_id, {})[grant] = None
        self.tenants[grant.tenant] = self.tenants.get(grant.tenant, 0) + 1

    def drop(self, grant: Grant) -> None:
        held = self.grants.get(grant.replica_id)
        if held is None or held.pop(grant, 0) is not None:
            return  # not held (dropped already, or taken back)
        if not held:
            del self.grants[grant.replica_id]
        left = self.tenants[grant.tenant] - 1
        if left:
            self.tenants[grant.tenant] = left
        else:
            del self.tenants[grant.tenant]

    def victim(self, replica_id: str | None, over_share: Callable[[str], bool],
               lower: Callable[[str], bool]) -> Grant | None:
        """The youngest grant on the replica (None: on any) of a tenant over its share whose
        class is ``lower`` than or equal to the waiting tenant's; None: nothing to take back."""
        best: Grant | None = None
        held = self.grants.get(replica_id, ()) if replica_id is not None else \
            [g for gs in self.grants.values() for g in gs]
        for g in held:
            if not g.preempted and (best is None or g.since > best.since) and lower(g.tenant) and over_share(g.tenant):
                best = g
        return best

    def take_back(self, grant: Grant) -> None:
        grant.preempted = True
        self.drop(grant)
        grant.abort()


class TakeBack:
    """FairQueue's side of preemption (cluster.gateway.flowcontrol.fair_queue): grants that may
    be taken back, registered by the forwarder, and the taking back when a tenant under its
    share is sent to a replica with no free running slot. Relies on FairQueue's state
    (``_models``, ``_policy``, ``_tenants``, ``_clock``, ``_metrics``) and ``over_share``."""

    def preemptible(self, model: str, tenant: str, replica_id: str, abort: Callable[[], None]) -> Grant | None:
        """Register a granted request, until ``settled``, as one that may be taken back
        (``abort`` closes its engine connection); None when preemption is off."""
        st = self._models.get(model)
        if not self._policy.preempt or st is None:
            return None
        grant = Grant(tenant, replica_id, self._clock(), abort)
        st.preemptible.hold(grant)
        return grant

    def settled(self, model: str, grant: Grant) -> None:
        """The request answered its client (or ended): it is no longer taken back."""
        self._models[model].preemptible.drop(grant)

    def _take_back(self, model: str, st, tenant: str, replica_id: str | None, cap) -> None:
        """``tenant`` was just sent to ``replica_id``, which had no free running slot (``cap``,
        before the grant), or (``replica_id`` None) waits in the queue for lack of room: if it is
        under its share, the youngest request there (None: anywhere) of a tenant over its share,
        of a class no higher, still before its first byte, is taken back."""
        if not self._policy.preempt or (replica_id not in cap.busy if replica_id is not None
                                        else self._admits(st, cap, tenant) is not None):
            return
        if replica_id is not None:  # its share as it was before this grant
            st.in_flight[tenant] -= 1
        over = self.over_share(st, tenant, cap)
        if replica_id is not None:
            st.in_flight[tenant] += 1
        if over:
            return
        rank = self._priority(tenant)
        seen: dict[str, bool] = {}  # per tenant, once per take-back (victim asks for every grant)

        def in_debt_or_over(t: str) -> bool:
            if t not in seen:
                seen[t] = self.over_share(st, t, cap)
            return seen[t]

        victim = st.preemptible.victim(replica_id, in_debt_or_over, lambda t: self._priority(t) <= rank)
        if victim is not None:
            st.preemptible.take_back(victim)
            self._metrics.fair_preemptions.labels(model, victim.tenant).inc()

    def _priority(self, tenant: str) -> int:
        cfg = self._tenants.get(tenant)
        return cfg.priority if cfg else 0
