"""Per-tenant admission: a token bucket on the request rate and a bound on requests in
flight. A refused request is a 429 with `Retry-After`, before any engine sees it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cluster.config.schema import TenantConfig
from cluster.gateway.errors import RETRY_SOON, OpenAIError


@dataclass
class _Bucket:
    rate_per_s: float
    capacity: float
    tokens: float
    stamp: float

    def take(self, now: float) -> float:
        """0 when a request may go now, else the seconds until one may."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate_per_s)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate_per_s


class TenantLimiter:
    def __init__(self, limits: Mapping[str, TenantConfig], *, clock: Callable[[], float] = time.monotonic):
        self._limits = dict(limits)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._in_flight: dict[str, int] = {}

    def admit(self, tenant: str) -> Callable[[], None]:
        """Admit one request of ``tenant`` or raise a 429; returns the release callback."""
        lim = self._limits.get(tenant)
        if lim is None:
            return _noop
        if lim.max_concurrent is not None and self._in_flight.get(tenant, 0) >= lim.max_concurrent:
            raise OpenAIError(
                429, f"tenant '{tenant}' has {lim.max_concurrent} requests in flight, its limit; retry shortly",
                type="rate_limit_error", code="concurrency_limit_exceeded", headers=RETRY_SOON,
            )
        if lim.requests_per_minute is not None:
            now = self._clock()
            bucket = self._buckets.get(tenant)
            if bucket is None:
                rate = lim.requests_per_minute / 60.0
                cap = float(lim.burst or max(1, int(lim.requests_per_minute / 10)))
                bucket = self._buckets[tenant] = _Bucket(rate, cap, cap, now)
            wait = bucket.take(now)
            if wait > 0:
                raise OpenAIError(
                    429, f"tenant '{tenant}' is over its limit of {lim.requests_per_minute:g} requests per minute",
                    type="rate_limit_error", code="rate_limit_exceeded",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
        if lim.max_concurrent is None:
            return _noop
        self._in_flight[tenant] = self._in_flight.get(tenant, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._in_flight[tenant] -= 1

        return release


def _noop() -> None:
    return None
