"""Per-tenant admission: token bucket and concurrency bound, on an injected clock."""

from __future__ import annotations

import pytest

from cluster.config.schema import TenantLimits
from cluster.gateway.errors import OpenAIError
from cluster.gateway.limits import TenantLimiter


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
    lim = TenantLimiter({"t": TenantLimits(requests_per_minute=limits[0], burst=limits[1])}, clock=clock)
    got = []
    for advance, n in steps:
        clock.t += advance
        ok = 0
        for _ in range(n):
            try:
                lim.admit("t")()
                ok += 1
            except OpenAIError as e:
                assert e.status == 429 and e.code == "rate_limit_exceeded"
                assert int(e.headers["Retry-After"]) >= 1
        got.append(ok)
    assert got == expected


def test_concurrency_limit_and_release():
    lim = TenantLimiter({"t": TenantLimits(max_concurrent=2)})
    r1, r2 = lim.admit("t"), lim.admit("t")
    with pytest.raises(OpenAIError) as e:
        lim.admit("t")
    assert e.value.status == 429 and e.value.code == "concurrency_limit_exceeded"
    r1()
    r1()  # releasing twice frees one slot only
    r3 = lim.admit("t")
    with pytest.raises(OpenAIError):
        lim.admit("t")
    r2(), r3()


def test_other_tenants_unlimited():
    lim = TenantLimiter({"t": TenantLimits(requests_per_minute=1, burst=1)})
    for _ in range(100):
        lim.admit("other")()
