"""Per-tenant limits in the in-process store (LocalStore, the store when none is shared):
the request-rate bucket with its default burst, the concurrency bound and its release,
unlimited tenants. The same table the gateway's old in-process limiter had, now on the
store every gateway process uses; the 429 each refusal becomes is tested over HTTP in
test_gateway_http / test_tenancy_charging."""

from __future__ import annotations

import asyncio

import pytest

from cluster.config.schema import TenantLimits
from cluster.tenancy.bucket import TokenBucket
from cluster.tenancy.local_store import LocalStore
from cluster.tenancy.model import CONCURRENCY, REQUESTS, Limits
from cluster.tenancy.service import limits_of


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.mark.parametrize("limits, steps, expected", [
    # (requests_per_minute, burst), [(advance_s, n_requests)], admitted per step
    ((60, 1), [(0, 1), (0, 1), (1.0, 1)], [1, 0, 1]),
    ((60, 3), [(0, 5)], [3]),
    ((60, 3), [(0, 3), (0.5, 1), (0.5, 1)], [3, 0, 1]),
    ((600, None), [(0, 100)], [60]),  # default burst: a tenth of a minute's worth
    ((6, None), [(0, 2), (10, 1)], [1, 1]),  # default burst at least 1
])
def test_rate_limit(limits, steps, expected):
    clock = Clock()
    store = LocalStore(clock=clock)
    lim = limits_of(TenantLimits(requests_per_minute=limits[0], burst=limits[1]))
    got = []
    for advance, n in steps:
        clock.t += advance
        ok = 0
        for _ in range(n):
            d = store.reserve_now("t", lim, 0)
            if d.admitted:
                ok += 1
            else:
                assert d.refused == REQUESTS and d.retry_s > 0
        got.append(ok)
    assert got == expected


def test_concurrency_limit_and_release():
    store = LocalStore()
    lim = limits_of(TenantLimits(max_concurrent=2))
    r1, r2 = store.reserve_now("t", lim, 0), store.reserve_now("t", lim, 0)
    assert r1.admitted and r2.admitted
    assert store.reserve_now("t", lim, 0).refused == CONCURRENCY
    settle = lambda d: asyncio.run(store.settle("t", "m", d, limits=lim, delta=0, usage=(0, 0, 0, 0, 0)))  # noqa: E731
    settle(r1)
    settle(r1)  # releasing twice frees one slot only
    r3 = store.reserve_now("t", lim, 0)
    assert r3.admitted
    assert store.reserve_now("t", lim, 0).refused == CONCURRENCY
    settle(r2), settle(r3)


def test_other_tenants_unlimited():
    store = LocalStore()
    store.reserve_now("t", limits_of(TenantLimits(requests_per_minute=1, burst=1)), 0)
    for _ in range(100):
        assert store.reserve_now("other", Limits(), 0).admitted


@pytest.mark.parametrize("rate, cap, steps, waits", [
    # [(advance_s, cost)] -> the wait each take() answers (0: taken)
    (1.0, 2.0, [(0, 1), (0, 1), (0, 1)], [0, 0, 1.0]),
    (1.0, 2.0, [(0, 2), (0.5, 1), (0.5, 1)], [0, 0.5, 0]),
    (2.0, 1.0, [(0, 1), (10, 1), (0, 1)], [0, 0, 0.5]),  # refills to its cap, no further
    (1.0, 4.0, [(0, 3), (0, 3)], [0, 2.0]),  # a refused take takes nothing
    (1.0, 1.0, [(0, 1), (-5, 1)], [0, 1.0]),  # a clock that steps back refills nothing
])
def test_token_bucket(rate, cap, steps, waits):
    b, now, got = TokenBucket.full(rate, cap, 0.0), 0.0, []
    for advance, cost in steps:
        now += advance
        got.append(b.take(now, cost))
    assert got == pytest.approx(waits)
