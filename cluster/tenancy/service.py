"""Tenancy as admission uses it: a decision before the work, a settlement after, whatever
the store's state. With a shared store (Redis) every gateway counts against the same
limits; when the store fails, ``on_failure`` decides: `open` admits without limits,
`closed` refuses (429 tenancy_store_unavailable, never a 5xx), `local` applies each
gateway's share of every limit in process. A failed store is retried after retry_s."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cluster.config.auth import TenantConfig
from cluster.tenancy.charging import Outcome, charge, settlement
from cluster.tenancy.line_charge import LineCharge, Part
from cluster.tenancy.local_store import LocalStore
from cluster.tenancy.model import UNAVAILABLE, Decision, Limits, month_of

log = logging.getLogger(__name__)
OPEN, CLOSED, LOCAL = "open", "closed", "local"


def _noop(*_a) -> None:
    return None


@dataclass
class Hooks:
    """What the tenancy reports (the gateway's metrics)."""

    store_error: Callable[[], None] = _noop
    store_up: Callable[[bool], None] = _noop
    quota: Callable[[str, str, float], None] = _noop  # (tenant, period, used / limit)


def limits_of(cfg: TenantConfig) -> Limits:
    burst = cfg.burst
    if cfg.requests_per_minute is not None and burst is None:
        burst = max(1, int(cfg.requests_per_minute / 10))
    return Limits(cfg.requests_per_minute, None if burst is None else float(burst), cfg.tokens_per_minute,
                  cfg.max_concurrent, cfg.daily_tokens, cfg.monthly_tokens)


@dataclass
class Ticket:
    """One request's decision, settled once."""

    tenant: str
    model: str
    estimate: int  # the prompt's estimated tokens
    decision: Decision
    limits: Limits
    settled: bool = field(default=False)
    batch_quota: bool = False  # refused on the tenant's batch_daily_tokens
    side: Ticket | None = None  # a batch line's reservation on its tenant's batch_daily_tokens
    line: tuple[str, int] | None = None  # a batch line's (batch id, line): reserved once per line


def batch_key(tenant: str) -> str:
    """Where a tenant's batch_daily_tokens are counted (its own quota keys, no usage records)."""
    return f"{tenant}/batch"


class Tenancy:
    def __init__(
        self, tenants: Mapping[str, TenantConfig], *, store=None, on_failure: str = LOCAL,
        gateways: Callable[[], int] = lambda: 1, hooks: Hooks | None = None, retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._limits = {t: limits_of(c) for t, c in tenants.items()}
        self._batch_daily = {t: c.batch_daily_tokens for t, c in tenants.items() if c.batch_daily_tokens}
        self.store = store
        self.on_failure = on_failure
        self._gateways = gateways
        self._hooks = hooks or Hooks()
        self._local = LocalStore()
        self._retry_s = retry_s
        self._clock = clock
        self._down_until = 0.0
        # What the store last said each tenant had used: (day, day_used, month, month_used).
        self._seen: dict[str, tuple[int, int | None, int, int | None]] = {}
        self._hooks.store_up(store is not None)

    @property
    def active(self) -> bool:
        return self.store is not None or bool(self._batch_daily) or any(lim != Limits() for lim in self._limits.values())

    def limits(self, tenant: str) -> Limits:
        return self._limits.get(tenant, Limits())

    async def admit(self, tenant: str, model: str, *, cost: int, estimate: int, batch: bool = False,
                    line: tuple[str, int] | None = None) -> Ticket:
        """The decision for one request reserving ``cost`` tokens (refused: ``decision.refused``);
        ``batch``: a batch line, held to the daily and monthly quotas and the tenant's
        batch_daily_tokens only (not its per-minute limits or concurrency); with ``line`` (batch
        id, line) it is reserved once per line and charged by ``settle_line``, not ``settle``."""
        lim = self.limits(tenant)
        if not batch:
            return await self._decide(tenant, model, cost, estimate, lim)
        side = None
        if tenant in self._batch_daily:
            side = await self._decide(batch_key(tenant), model, cost, estimate,
                                      Limits(daily_tokens=self._batch_daily[tenant]), hold=line)
            if not side.decision.admitted:
                return dataclasses.replace(side, tenant=tenant, batch_quota=True)
        t = await self._decide(tenant, model, cost, estimate,
                               Limits(daily_tokens=lim.daily_tokens, monthly_tokens=lim.monthly_tokens), hold=line)
        if not t.decision.admitted and side is not None:  # nothing ran: the reservation back
            if line is None:
                await self._settle(side, -side.decision.cost, usage=None)
            else:
                await self._release(side.decision.source, side.tenant, line[0], [line[1]])
        t.side, t.line = side, line
        return t

    async def _decide(self, tenant: str, model: str, cost: int, estimate: int, lim: Limits, *,
                      hold: tuple[str, int] | None = None) -> Ticket:
        if self.store is None:
            d = self._local.reserve_now(tenant, lim, cost, hold=hold)
            self._report(tenant, lim, d)  # owc_tenant_quota_used_ratio without a shared store too
            return Ticket(tenant, model, estimate, d, lim)
        if self._clock() >= self._down_until:
            try:
                d = await self.store.reserve(tenant, lim, cost, hold=hold) if hold else await self.store.reserve(
                    tenant, lim, cost)
                self._up()
                self._report(tenant, lim, d)
                if d.day_used is not None or d.month_used is not None:
                    self._seen[tenant] = (d.day, d.day_used, d.month, d.month_used)
                return Ticket(tenant, model, estimate, d, lim)
            except Exception as e:  # the store is down or answered nonsense: never a 500
                self._failed(e)
        if self.on_failure == OPEN:
            return Ticket(tenant, model, estimate, Decision(None, source="open"), Limits())
        if self.on_failure == CLOSED:
            return Ticket(tenant, model, estimate, Decision(UNAVAILABLE, retry_s=self._retry_s, source="open"), lim)
        share = self._outage_share(tenant, lim)
        return Ticket(tenant, model, estimate, self._local.reserve_now(tenant, share, cost, hold=hold), share)

    def _outage_share(self, tenant: str, lim: Limits) -> Limits:
        """This gateway's share of ``tenant``'s limits while the store is down (on_failure
        `local`): of each limit a 1/n part (n live gateways); of its quotas, of what the store
        last said was left of them this day and month, so that a tenant over its quota stays
        over it through the outage instead of starting afresh."""
        n = max(1, int(self._gateways()))
        share, seen = lim.divided(n), self._seen.get(tenant)
        if seen is None:
            return share
        day, day_used, month, month_used = seen
        today = int(time.time() // 86400)
        this_month = month_of(today)[0]

        def left(limit: int | None, used: int | None, current: bool, part: int | None) -> int | None:
            return part if limit is None or used is None or not current else max(0, limit - used) // n

        return dataclasses.replace(
            share, daily_tokens=left(lim.daily_tokens, day_used, day == today, share.daily_tokens),
            monthly_tokens=left(lim.monthly_tokens, month_used, month == this_month, share.monthly_tokens))

    async def settle(self, ticket: Ticket | None, outcome: Outcome, *, reasoning: int = 0) -> None:
        """Charge a finished request for what its client received (refund or top-up of its
        reservation), release its slot, record its usage; once."""
        if ticket is None or ticket.settled or not ticket.decision.admitted:
            return
        ticket.settled = True
        d = ticket.decision
        prompt, completion = charge(outcome, estimate=ticket.estimate)
        delta = settlement(d.cost, prompt + completion)
        await self._settle(ticket, delta, usage=(1, prompt, completion, reasoning, int(outcome.status >= 400)))
        if ticket.side is not None:  # the batch quota charged alike; the usage is recorded once, above
            ticket.side.settled = True
            await self._settle(ticket.side, settlement(ticket.side.decision.cost, prompt + completion), usage=None)

    async def _settle(self, ticket: Ticket, delta: int, *, usage: tuple[int, int, int, int, int] | None) -> None:
        d = ticket.decision
        if d.source == "open":
            return
        if d.source == "local":
            await self._local.settle(ticket.tenant, ticket.model, d, limits=ticket.limits, delta=delta, usage=usage)
            return
        try:
            await self.store.settle(ticket.tenant, ticket.model, d, limits=ticket.limits, delta=delta, usage=usage)
        except Exception as e:  # the charge is lost with the store; its lease lapses
            self._failed(e)

    # -- batch lines: charged once per line, whichever process ran it and however often -----------

    def line_charge(self, ticket: Ticket, outcome: Outcome, *, reasoning: int = 0) -> str | None:
        """A batch line's pending charge (LineCharge JSON), settled later by ``settle_line``;
        None when nothing is to be charged (refused, or admitted with the store down, open)."""
        if ticket.settled or not ticket.decision.admitted or ticket.decision.source == "open":
            return None
        ticket.settled = True
        prompt, completion = charge(outcome, estimate=ticket.estimate)

        def part(t: Ticket | None) -> Part | None:
            if t is None or t.decision.source == "open":
                return None
            return Part(t.decision.source, t.decision.day, t.decision.month, t.limits.daily_tokens is not None,
                        t.limits.monthly_tokens is not None)

        return LineCharge(ticket.tenant, ticket.model, prompt + completion,
                          (1, prompt, completion, reasoning, int(outcome.status >= 400)), part(ticket),
                          part(ticket.side)).dumps()

    def _store_of(self, source: str):
        return self.store if source == "redis" else self._local

    async def settle_line(self, batch_id: str, line: int, raw: str) -> None:
        """Charge a batch line (its tokens, its usage record) unless it was already: the store
        keeps which lines are settled, so a second call (a rerun, a close after a crash) charges
        nothing; the line's hold (the reservation of whichever run made it) is refunded. Raises
        when the store fails, so that the caller keeps the charge pending."""
        c = LineCharge.loads(raw)
        for tenant, p, usage in ((c.tenant, c.main, c.usage), (batch_key(c.tenant), c.side, None)):
            if p is None:
                continue
            lim = Limits(daily_tokens=0 if p.daily else None, monthly_tokens=0 if p.monthly else None)
            try:
                await self._store_of(p.source).settle_line(tenant, c.model, batch_id, line, tokens=c.tokens,
                                                           day=p.day, month=p.month, limits=lim, usage=usage)
            except Exception as e:
                self._failed(e)
                raise

    async def release_lines(self, tenant: str, batch_id: str, lines: list[int] | None, *,
                            settled_only: bool = False) -> None:
        """Holds of a batch's lines refunded: ``lines`` (None: all, its close); ``settled_only``: of
        lines already charged only (a late rerun's). Raises when the store fails."""
        for t in (tenant, batch_key(tenant)) if tenant in self._batch_daily else (tenant,):
            for source in ("local", "redis") if self.store is not None else ("local",):
                await self._release(source, t, batch_id, lines, settled_only=settled_only)

    async def _release(self, source: str, tenant: str, batch_id: str, lines: list[int] | None, *,
                       settled_only: bool = False) -> None:
        if source == "open":
            return
        try:
            await self._store_of(source).release_lines(tenant, batch_id, lines, settled_only=settled_only)
        except Exception as e:
            self._failed(e)
            raise

    def _up(self) -> None:
        if self._down_until:
            log.warning("tenancy store %s is back", getattr(self.store, "url", ""))
            self._down_until = 0.0
            self._hooks.store_up(True)

    def _failed(self, e: Exception) -> None:
        self._hooks.store_error()
        if not self._down_until:
            log.warning("tenancy store %s failed (%s): on_failure=%s", getattr(self.store, "url", ""), e,
                        self.on_failure)
        self._hooks.store_up(False)
        self._down_until = self._clock() + self._retry_s

    def _report(self, tenant: str, lim: Limits, d: Decision) -> None:
        if d.day_used is not None and lim.daily_tokens:
            self._hooks.quota(tenant, "day", d.day_used / lim.daily_tokens)
        if d.month_used is not None and lim.monthly_tokens:
            self._hooks.quota(tenant, "month", d.month_used / lim.monthly_tokens)

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
