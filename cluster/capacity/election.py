"""Leader election on a coordination.k8s.io/v1 Lease, so that of several controller pods
only the holder acts.

Timing: the holder renews every ``renew_interval_s`` (the reconcile interval; also between
the targets of a long round), and the Lease lasts ``duration_s`` >= 2 x the interval +
``LEASE_MARGIN_S``, so one overrunning round (a slow Prometheus, a slow API server) does
not hand leadership over; the default is exactly that bound.

The Lease also carries the holder's record of when it last scaled each target (annotation
``owc.io/capacity-events``), written *before* each scaling with the resourceVersion read:
a pod that lost the Lease cannot write it, so it cannot scale either, and a new holder
takes its cooldowns from it. Windows are not kept here: a new leader rebuilds them from
Prometheus's history (cluster.capacity.windows).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

LEASE_MARGIN_S = 5.0


def lease_duration_for(renew_interval_s: float) -> int:
    """The shortest Lease that survives one overrunning round: 2 x interval + margin (whole seconds)."""
    return math.ceil(2 * renew_interval_s + LEASE_MARGIN_S)


def check_lease_timing(duration_s: float, renew_interval_s: float) -> None:
    if renew_interval_s <= 0:
        raise ValueError(f"the renew (reconcile) interval must be positive, not {renew_interval_s:g}s")
    least = 2 * renew_interval_s + LEASE_MARGIN_S
    if duration_s < least:
        raise ValueError(
            f"the Lease duration ({duration_s:g}s) must be at least 2 x the reconcile interval + {LEASE_MARGIN_S:g}s "
            f"({least:g}s with --interval {renew_interval_s:g}): a shorter Lease hands leadership over whenever a "
            "round overruns")


class LeaseElector:
    """Acquire when absent or expired, renew while held; every write carries the
    resourceVersion read, so two candidates can never both win the same round."""

    def __init__(self, *, api: Any, namespace: str, name: str, identity: str, duration_s: int | None = None,
                 renew_interval_s: float = 15.0, clock: Any = None):
        self._api = api  # kubernetes.client.CoordinationV1Api
        self._ns, self._name, self.identity = namespace, name, identity
        self._duration = duration_s if duration_s is not None else lease_duration_for(renew_interval_s)
        check_lease_timing(self._duration, renew_interval_s)
        self._renew_every = renew_interval_s
        self._clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self._renewed: dt.datetime | None = None  # this candidate's last successful write
        self.annotations: dict[str, str] = {}  # on the Lease as of that write
        # Bumped on every acquisition (created, taken over, or renewed after this candidate
        # lost it or let it expire): a new term, in which nothing remembered from an earlier
        # one may be acted on.
        self.term = 0

    @property
    def duration_s(self) -> int:
        return self._duration

    def _body(self, now: dt.datetime, transitions: int, acquired: dt.datetime, rv: str | None,
              annotations: Mapping[str, str]):
        from kubernetes import client

        return client.V1Lease(
            metadata=client.V1ObjectMeta(name=self._name, namespace=self._ns, resource_version=rv,
                                         annotations=dict(annotations) or None),
            spec=client.V1LeaseSpec(holder_identity=self.identity, lease_duration_seconds=self._duration,
                                    acquire_time=acquired, renew_time=now, lease_transitions=transitions),
        )

    def _lost(self) -> bool:
        self._renewed = None
        return False

    def is_leader(self, annotations: Mapping[str, str] | None = None) -> bool:
        """Acquire or renew (one read, at most one write); ``annotations`` are merged into the
        Lease's only when this candidate holds it."""
        from kubernetes.client.exceptions import ApiException

        now = self._clock()
        try:
            lease = self._api.read_namespaced_lease(self._name, self._ns)
        except ApiException as e:
            if e.status != 404:
                raise
            if annotations is not None:
                return self._lost()  # recording needs a Lease this candidate still holds
            merged = dict(annotations or {})
            try:
                self._api.create_namespaced_lease(self._ns, self._body(now, 0, now, None, merged))
            except ApiException as e2:
                if e2.status == 409:
                    return self._lost()
                raise
            self._renewed, self.annotations, self.term = now, merged, self.term + 1
            return True
        spec = lease.spec
        holder = spec.holder_identity
        renew = spec.renew_time
        expired = renew is None or (now - renew).total_seconds() > (spec.lease_duration_seconds or self._duration)
        if holder != self.identity and (not expired or annotations is not None):
            return self._lost()
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        acquired = spec.acquire_time if holder == self.identity and spec.acquire_time else now
        merged = {**(lease.metadata.annotations or {}), **(annotations or {})}
        try:
            self._api.replace_namespaced_lease(
                self._name, self._ns, self._body(now, transitions, acquired, lease.metadata.resource_version, merged))
        except ApiException as e:
            if e.status == 409:
                return self._lost()
            raise
        if holder != self.identity or expired or self._renewed is None:
            self.term += 1
        self._renewed, self.annotations = now, merged
        return True

    def keep(self) -> bool:
        """Still the leader? Renews when the last renewal is a renew interval old (a long
        round renews between its targets), else answers from that renewal."""
        if self._renewed is not None and (self._clock() - self._renewed).total_seconds() < self._renew_every:
            return True
        return self.is_leader()

    def holds(self) -> bool:
        """Held now, from this candidate's last renewal and no call (another thread may ask:
        `owc controller`'s rollout analysis): True while that renewal is younger than the
        Lease less one renew interval, so whatever the caller writes next lands while no
        other candidate can have taken the Lease (the holder renews every interval)."""
        renewed = self._renewed
        return renewed is not None and (self._clock() - renewed).total_seconds() < self._duration - self._renew_every

    def record(self, annotations: Mapping[str, str]) -> bool:
        """Write ``annotations`` on the Lease (renewing it) only if this candidate holds it
        now: False when another holds it or the write lost a race (then do not act)."""
        return self.is_leader(annotations)
