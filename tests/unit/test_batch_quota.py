"""Batch lines in tenancy (cluster.tenancy.service): held to the tenant's daily and monthly quotas
and its batch_daily_tokens, never to its per-minute limits or concurrency (its batch does not
throttle its interactive traffic); the batch quota is settled like the quota, its usage recorded
once (under the tenant, not under the batch quota's key). In process and over a real redis-server."""

from __future__ import annotations

import asyncio

import pytest

from cluster.config.auth import TenantConfig
from cluster.tenancy.charging import Outcome
from cluster.tenancy.model import DAILY
from cluster.tenancy.redis_store import RedisStore
from cluster.tenancy.service import Tenancy, batch_key
from tests.unit.test_batch_store import redis_url  # noqa: F401 - the fixture

TENANTS = {"t": TenantConfig(requests_per_minute=1, max_concurrent=1, batch_daily_tokens=100, daily_tokens=1000)}


@pytest.fixture(params=["local", "redis"])
def tenancy(request):
    if request.param == "local":
        return lambda: Tenancy(TENANTS)

    url = request.getfixturevalue("redis_url")

    def make():
        store = RedisStore(url)
        return Tenancy(TENANTS, store=store)
    return make


def test_batch_lines_skip_per_minute_limits_and_stop_at_the_batch_quota(tenancy):
    async def go():
        t = tenancy()
        if t.store is not None:
            await t.store._r.flushdb()
        first = await t.admit("t", "batch:m", cost=40, estimate=5, batch=True)
        second = await t.admit("t", "batch:m", cost=40, estimate=5, batch=True)  # rpm 1, concurrency 1: not applied
        assert first.decision.admitted and second.decision.admitted
        third = await t.admit("t", "batch:m", cost=40, estimate=5, batch=True)
        assert (third.decision.refused, third.batch_quota, third.limits.daily_tokens) == (DAILY, True, 100)
        await t.settle(first, Outcome(200, 4, 6, 1))  # 10 tokens, not 40: the batch quota refunded too
        fourth = await t.admit("t", "batch:m", cost=40, estimate=5, batch=True)
        assert fourth.decision.admitted
        interactive = await t.admit("t", "m", cost=10, estimate=5)
        assert interactive.decision.admitted  # the batch took none of its per-minute budget
        again = await t.admit("t", "m", cost=10, estimate=5)
        assert again.decision.refused is not None and not again.batch_quota  # its own rpm of 1 still holds
        for ticket in (second, fourth, interactive):
            await t.settle(ticket, Outcome(200, 4, 6, 1))
        if t.store is not None:
            rows = await t.store.usage()
            assert {(r["tenant"], r["model"], r["requests"]) for r in rows} == {("t", "batch:m", 3), ("t", "m", 1)}
            assert not any(r["tenant"] == batch_key("t") for r in rows)
            await t.close()

    asyncio.run(go())
