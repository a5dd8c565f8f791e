"""The in-process store: the same decisions as the Redis scripts, counted by this gateway
alone. With no shared store configured it is the store (today's per-process behaviour,
now with token limits and quotas too); as on_failure `local` each gateway applies its
share of every limit (the limit divided by the live gateway count)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable

from cluster.tenancy.bucket import TokenBucket
from cluster.tenancy.charging import Window
from cluster.tenancy.model import CONCURRENCY, DAILY, MONTHLY, REQUESTS, TOKENS, TOO_LARGE, Decision, Limits, month_of


class LocalStore:
    def __init__(self, *, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._in_flight: dict[str, set[str]] = {}
        self._quota: dict[tuple[str, str, int], int] = {}
        # Lease ids unique in this store: a counter, not a uuid4 (a getrandom call per request).
        self._lease_prefix = os.urandom(4).hex()
        self._leases = itertools.count()
        # Batch lines (as RedisStore): (tenant, batch) -> line -> (cost, day, month) reserved once,
        # and the lines charged; a batch's are forgotten when all its holds are released (its close).
        self._holds: dict[tuple[str, str], dict[int, tuple[int, int | None, int | None]]] = {}
        self._settled: dict[tuple[str, str], set[int]] = {}
        self._closed: dict[tuple[str, str], float] = {}

    def _bucket(self, tenant: str, kind: str, rate: float, cap: float, now: float) -> TokenBucket:
        b = self._buckets.get((tenant, kind))
        if b is None or b.rate != rate or b.cap != cap:  # new, or the limit changed (gateway count)
            level = cap if b is None else min(cap, b.refill(now))
            b = self._buckets[(tenant, kind)] = TokenBucket(rate, cap, level, now)
        b.refill(now)
        return b

    async def reserve(self, tenant: str, limits: Limits, cost: int, *, hold: tuple[str, int] | None = None) -> Decision:
        return self.reserve_now(tenant, limits, cost, hold=hold)

    def reserve_now(self, tenant: str, limits: Limits, cost: int, *, hold: tuple[str, int] | None = None) -> Decision:
        now = self._clock()
        day = int(now // 86400)
        month, next_month = month_of(day)
        dreset, mreset = (day + 1) * 86400 - now, next_month * 86400 - now
        rq = tk = None
        if limits.requests_per_minute:
            rq = self._bucket(tenant, "rq", limits.requests_per_minute / 60, float(limits.burst or 1), now)
        if limits.tokens_per_minute:
            tk = self._bucket(tenant, "tk", limits.tokens_per_minute / 60, float(limits.tokens_per_minute), now)
        dused = self._quota.get((tenant, "d", day), 0) if limits.daily_tokens is not None else None
        mused = self._quota.get((tenant, "m", month), 0) if limits.monthly_tokens is not None else None
        slots = self._in_flight.setdefault(tenant, set())

        def out(code: str | None, retry: float = 0.0, lease: str | None = None) -> Decision:
            return Decision(
                refused=code, retry_s=retry, lease=lease, day=day, month=month, day_used=dused, month_used=mused,
                requests=Window(rq.cap, rq.level, rq.reset_s()) if rq else None,  # charging.Window: its bucket
                tokens=Window(limits.tokens_per_minute, tk.level, tk.reset_s()) if tk else None,
                day_reset_s=dreset, month_reset_s=mreset, source="local", cost=0 if code else cost,
            )

        held = self._holds.setdefault((tenant, hold[0]), {}) if hold else None
        if held is not None and hold[1] in held:  # a rerun of a line still held: admitted on that hold
            return out(None)
        if dused is not None and dused + cost > limits.daily_tokens:
            return out(DAILY, dreset)
        if mused is not None and mused + cost > limits.monthly_tokens:
            return out(MONTHLY, mreset)
        if limits.max_concurrent is not None and len(slots) >= limits.max_concurrent:
            return out(CONCURRENCY, 1.0)
        if rq is not None and rq.level < 1:
            return out(REQUESTS, rq.wait_s())
        if tk is not None and cost > tk.cap:
            return out(TOO_LARGE, 60.0)
        if tk is not None and tk.level < cost:
            return out(TOKENS, tk.wait_s(cost))
        if rq is not None:
            rq.level -= 1
        if tk is not None:
            tk.level -= cost
        if dused is not None:
            dused = self._quota[(tenant, "d", day)] = dused + cost
        if mused is not None:
            mused = self._quota[(tenant, "m", month)] = mused + cost
        if held is not None:
            held[hold[1]] = (cost, day if dused is not None else None, month if mused is not None else None)
        lease = None
        if limits.max_concurrent is not None:
            lease = f"{self._lease_prefix}{next(self._leases):x}"
            slots.add(lease)
        return out(None, lease=lease)

    async def settle(self, tenant: str, model: str, d: Decision, *, limits: Limits, delta: int,
                     usage: tuple[int, int, int, int, int] | None) -> None:
        if d.lease:
            self._in_flight.get(tenant, set()).discard(d.lease)
        if delta and limits.tokens_per_minute:
            b = self._buckets.get((tenant, "tk"))
            if b is not None:
                b.refill(self._clock())
                b.level = min(b.cap, b.level - delta)
        for kind, period, on in (("d", d.day, limits.daily_tokens), ("m", d.month, limits.monthly_tokens)):
            if delta and on is not None and (tenant, kind, period) in self._quota:
                self._quota[(tenant, kind, period)] += delta

    def _adjust(self, tenant: str, kind: str, period: int | None, delta: int) -> None:
        if period is not None and delta and ((tenant, kind, period) in self._quota or delta > 0):
            self._quota[(tenant, kind, period)] = self._quota.get((tenant, kind, period), 0) + delta

    def _refund(self, tenant: str, hold: tuple[int, int | None, int | None]) -> None:
        cost, day, month = hold
        self._adjust(tenant, "d", day, -cost)
        self._adjust(tenant, "m", month, -cost)

    async def settle_line(self, tenant: str, model: str, batch_id: str, line: int, *, tokens: int, day: int,
                          month: int, limits: Limits, usage: tuple[int, int, int, int, int] | None) -> bool:
        hold = self._holds.get((tenant, batch_id), {}).pop(line, None)
        if hold is not None:
            self._refund(tenant, hold)
            _, d, m = hold
        else:
            d = day if limits.daily_tokens is not None else None
            m = month if limits.monthly_tokens is not None else None
        settled = self._settled.setdefault((tenant, batch_id), set())
        if line in settled:
            return False
        settled.add(line)
        self._adjust(tenant, "d", d, tokens)
        self._adjust(tenant, "m", m, tokens)
        return True

    async def release_lines(self, tenant: str, batch_id: str, lines: list[int] | None, *, settled_only: bool) -> int:
        held = self._holds.get((tenant, batch_id), {})
        settled = self._settled.get((tenant, batch_id), set())
        n = 0
        for line in list(held) if lines is None else lines:
            if line in held and (not settled_only or line in settled):
                self._refund(tenant, held.pop(line))
                n += 1
        if lines is None:  # the batch's close: its settled lines kept an hour (late answers), then forgotten
            self._holds.pop((tenant, batch_id), None)
            now = self._clock()
            self._closed[(tenant, batch_id)] = now
            for key in [k for k, at in self._closed.items() if at < now - 3600]:
                self._settled.pop(key, None)
                self._closed.pop(key, None)
        return n
