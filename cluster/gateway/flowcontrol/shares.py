"""Whether a tenant holds its fair share of a model's slots or more: FairQueue's side of the
shares (cluster.gateway.flowcontrol.fair_queue), counted now, less the tenant's credit for the
part of its share it left unused over time, or plus its debt for the part of the others'
it held (cluster.gateway.flowcontrol.slot_usage). Pure: no
I/O, no HTTP library."""

from __future__ import annotations

from collections.abc import Mapping

from cluster.config.auth import TenantConfig
from cluster.config.gateway import FairSharing
from cluster.gateway.flowcontrol.capacity import Capacity
from cluster.gateway.flowcontrol.shared import Counts
from cluster.gateway.flowcontrol.shared_dispatch import ModelState
from cluster.gateway.flowcontrol.slot_usage import balance


class Shares:
    """Relies on FairQueue's ``_policy``, ``_tenants``, ``_clock`` and ``_active``."""

    _policy: FairSharing
    _tenants: Mapping[str, TenantConfig]

    def _weight(self, tenant: str) -> float:
        cfg = self._tenants.get(tenant)
        return cfg.weight if cfg else 1.0

    def over_share(self, st: ModelState, tenant: str, cap: Capacity) -> bool:
        """The tenant holds its fair share of the model's slots or more while other tenants
        are active (one alone has them all), less its credit (cluster.gateway.flowcontrol.
        slot_usage: the part of its share it left unused on average while others used more),
        or plus its debt (its part of the others' credits, while it held more than its share on
        average): a tenant in debt is over its share even holding less now, for its own
        requests (kept from the headroom and the dispatch margin while the tenants it owes are
        active) and as a victim of preemption.
        Behind a balancer each gateway sees its part of every tenant's requests: the share is
        of the slots the other gateways do not hold, or of all of them with this gateway's mix
        of tenants taken for the others' requests too. With the shared view: the tenant's
        requests and average on every process, of all the slots, its share among the tenants
        active on any process."""
        active = self._active(st)
        if cap.view is not None:
            active = list(dict.fromkeys([*active, *cap.view.tenants]))
        if len(active) < 2 or tenant not in active:
            return False
        weights = {t: self._weight(t) for t in active}
        part = weights[tenant] / sum(weights.values())
        mine = st.in_flight.get(tenant, 0)
        if cap.view is not None:
            held, total = mine + cap.view.tenants.get(tenant, 0), cap.total
        else:
            held, total = mine, max(0, cap.total - cap.others)

        def over(count: float) -> bool:
            if count >= total * part:
                return True
            return cap.view is None and cap.others > 0 and cap.own > 0 and \
                count * (cap.own + cap.others) / cap.own >= cap.total * part

        # The averages (an exp() per tenant) only where they can change the answer: under by its
        # count, only a debt can make it over (none while its own average is under its share).
        return over(held - self._balance(st, tenant, weights, total, cap.view, debt_only=not over(held)))

    def _balance(self, st: ModelState, tenant: str, weights: Mapping[str, float], total: int,
                 view: Counts | None, *, debt_only: bool = False) -> float:
        """``tenant``'s credit (positive) or debt (negative) against the active tenants' shares
        of ``total`` slots, from their averages (this process's, plus the others' in ``view``)
        and the time each has been active here, times ``credit_burst``: a light tenant spends
        its average credit in bursts, taking slots back from the tenants in debt. ``debt_only``:
        0 for a tenant at or under its share on average (its credit is not asked)."""
        theirs = view.usage if view is not None else {}
        if not self._policy.credit_window_s or not st.usage and not theirs:
            return 0.0
        now, norm = self._clock(), sum(weights.values())
        averages = {t: st.usage.average(t, st.in_flight.get(t, 0), now) + theirs.get(t, 0.0) for t in weights}
        shares = {t: total * w / norm for t, w in weights.items()}
        if debt_only and averages[tenant] <= shares[tenant]:
            return 0.0
        # Presence is this process's view: a tenant active only on other processes is owed nothing here.
        return self._policy.credit_burst * balance(tenant, shares, averages, lambda t: st.usage.presence(t, now))
