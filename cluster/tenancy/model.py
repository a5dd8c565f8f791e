"""What the stores take and answer: a tenant's effective limits and one admission decision."""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass

from cluster.tenancy.charging import Window

# Refusal codes a store answers (None: admitted).
REQUESTS, TOKENS, TOO_LARGE, CONCURRENCY, DAILY, MONTHLY = (
    "requests", "tokens", "too_large", "concurrency", "daily", "monthly")
UNAVAILABLE = "unavailable"  # the store is down and on_failure is closed


@dataclass(frozen=True)
class Limits:
    """One tenant's limits as a store applies them (None: no such limit)."""

    requests_per_minute: float | None = None
    burst: float | None = None
    tokens_per_minute: float | None = None
    max_concurrent: int | None = None
    daily_tokens: int | None = None
    monthly_tokens: int | None = None

    def divided(self, n: int) -> Limits:
        """Each gateway's share when ``n`` gateways each count alone (on_failure: local)."""
        if n <= 1:
            return self

        def part(v, whole=False):
            if v is None:
                return None
            return max(1, int(v // n)) if whole else max(v / n, 1e-9)

        return Limits(part(self.requests_per_minute), max(1.0, self.burst / n) if self.burst else None,
                      part(self.tokens_per_minute), part(self.max_concurrent, True), part(self.daily_tokens, True),
                      part(self.monthly_tokens, True))


@dataclass(frozen=True)
class Decision:
    refused: str | None  # a refusal code above, None when admitted
    retry_s: float = 0.0  # a refusal: seconds until it may pass
    requests: Window | None = None
    tokens: Window | None = None
    lease: str | None = None  # the concurrency slot held, released at settlement
    day: int = 0  # UTC days since 1970-01-01 (the quota and usage period)
    month: int = 0  # yyyymm
    day_used: int | None = None  # tokens charged today (and this month), the reservation included
    month_used: int | None = None
    day_reset_s: float = 0.0
    month_reset_s: float = 0.0
    source: str = "local"  # which store decided: redis | local | open
    cost: int = 0  # tokens reserved

    @property
    def admitted(self) -> bool:
        return self.refused is None


def day_name(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def day_number(date: dt.date) -> int:
    return (date - dt.date(1970, 1, 1)).days


@functools.lru_cache(maxsize=8)  # every request asks for today's: the date arithmetic once a day
def month_of(day: int) -> tuple[int, int]:
    """(yyyymm, the next month's first day) of a UTC day number."""
    d = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    return d.year * 100 + d.month, day_number(dt.date(d.year + (d.month == 12), d.month % 12 + 1, 1))
