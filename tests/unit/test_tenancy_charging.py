"""The charging arithmetic and the rate-limit header values (cluster.tenancy.charging), and
the in-process store's decisions (cluster.tenancy.local_store), table-driven."""

from __future__ import annotations

import asyncio
import time
from types import MappingProxyType

import pytest

from cluster.tenancy.charging import (Outcome, Window, charge, format_reset, output_allowance, prompt_estimate,
                                      ratelimit_headers, reservation, settlement)
from cluster.tenancy.local_store import LocalStore
from cluster.tenancy.model import Decision, Limits, month_of

DEFAULTS = {"default": 1024, "low": 2048, "high": 32768}


@pytest.mark.parametrize("data, tokens", [
    ({"messages": [{"role": "user", "content": "abcd"}]}, 2),  # "user" + "abcd": 8 bytes
    ({"prompt": "x" * 9}, 3),
    ({"prompt": ["ab", "cd"]}, 1),
    ({"input": "héllo", "instructions": "be brief"}, 4),  # 6 + 8 bytes
    ({}, 1),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 40}]}]}, 12),
    # numbers, booleans and nulls count nothing; non-ASCII text counts its UTF-8 bytes
    ({"messages": [{"role": "user", "content": "日本語", "name": None, "weight": 1.5, "cached": True, "n": 3}]}, 4),
    # not what a parsed JSON body holds (a caller's own mapping or tuple): counted alike
    ({"messages": (MappingProxyType({"role": "user", "content": "abcd"}),)}, 2),
])
def test_prompt_estimate_is_bytes_over_four(data, tokens):
    assert prompt_estimate(data) == tokens


@pytest.mark.parametrize("data, cap, n, allowance", [
    ({"max_tokens": 100}, 32768, 1, 100),
    ({"max_completion_tokens": 50_000}, 4096, 1, 4096),  # the tenant's cap
    ({"max_output_tokens": 10}, 32768, 3, 30),  # times n
    ({}, 32768, 1, 1024),  # no effort: the model's default
    ({"reasoning_effort": "high"}, 32768, 1, 32768),
    ({"reasoning_effort": "high"}, 8000, 1, 8000),
    ({"reasoning": {"effort": "low"}}, 32768, 1, 2048),  # Responses
    ({"reasoning_effort": "unlisted"}, 32768, 1, 1024),
    ({"max_tokens": 0}, 32768, 1, 1024),
])
def test_output_allowance(data, cap, n, allowance):
    assert output_allowance(data, cap=cap, defaults=DEFAULTS, n=n) == allowance


def test_reservation_is_prompt_estimate_plus_allowance():
    assert reservation({"prompt": "x" * 40, "max_tokens": 20, "n": 2}, cap=100, defaults=DEFAULTS) == 10 + 40


@pytest.mark.parametrize("outcome, charged", [
    (Outcome(200, 11, 20), (11, 20)),  # the engine's usage
    (Outcome(499, None, None, token_events=5), (10, 5)),  # a stream cut short: estimate + events relayed
    (Outcome(502), (0, 0)),  # nothing delivered
    (Outcome(200, 7, None), (7, 0)),
    (Outcome(499, 68, None, token_events=5), (68, 5)),  # a Messages stream cut short: its input + events relayed
])
def test_charge_is_what_the_client_received(outcome, charged):
    assert charge(outcome, estimate=10) == charged


@pytest.mark.parametrize("reserved, charged, delta", [(100, 31, -69), (10, 25, 15), (0, 0, 0)])
def test_settlement_refunds_or_tops_up(reserved, charged, delta):
    assert settlement(reserved, charged) == delta


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (0.25, "250ms"), (0.0001, "1ms"), (1, "1s"), (1.2, "2s"), (59, "59s"), (60, "1m0s"), (360, "6m0s"),
    (3723, "1h2m3s"),
])
def test_reset_format_is_openais(seconds, text):
    assert format_reset(seconds) == text


def test_header_values():
    h = ratelimit_headers(Window(60, 9.7, 3.2), Window(1000, 0, 0.5))
    assert h == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "9", "x-ratelimit-reset-requests": "4s",
        "x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "500ms",
    }
    assert ratelimit_headers(None, None) == {}
    assert ratelimit_headers(Window(1000, -5, 61), None)["x-ratelimit-remaining-requests"] == "0"


@pytest.mark.parametrize("limit, text", [
    (60, "60"), (1_000_000, "1000000"), (2_500_000.0, "2500000"), (10**12, "1000000000000"), (0.5, "0.5"), (1.25, "1.25"),
])
def test_limit_headers_are_plain_numbers(limit, text):
    """Integers as OpenAI sends them, never "1e+06" (clients read them with int())."""
    h = ratelimit_headers(Window(limit, 0, 1), Window(limit, 0, 1))
    assert h["x-ratelimit-limit-requests"] == h["x-ratelimit-limit-tokens"] == text


class Clock:
    def __init__(self, t: float = 86400 * 20000 + 3600):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_local_store_buckets_quota_and_settlement():
    clock = Clock()
    store = LocalStore(clock=clock)
    lim = Limits(requests_per_minute=60, burst=2, tokens_per_minute=100, max_concurrent=5, daily_tokens=150)
    a, b = store.reserve_now("t", lim, 40), store.reserve_now("t", lim, 40)
    assert a.admitted and b.admitted and a.tokens.remaining == 60 and b.requests.remaining == 0
    assert store.reserve_now("t", lim, 1).refused == "requests"
    clock.t += 1  # one request back; tokens 20 + 100/60
    assert store.reserve_now("t", lim, 40).refused == "tokens"
    asyncio.run(store.settle("t", "m", a, limits=lim, delta=-30, usage=(1, 5, 5, 0, 0)))  # refund
    c = store.reserve_now("t", lim, 40)
    assert c.admitted and c.day_used == 80 + 40 - 30
    assert store.reserve_now("t", Limits(daily_tokens=150), 100).refused == "daily"
    assert store.reserve_now("t", Limits(tokens_per_minute=100), 101).refused == "too_large"
    assert c.day_reset_s == 86400 - 3600 - 1


def test_limits_divided_among_gateways():
    lim = Limits(requests_per_minute=60, burst=10, tokens_per_minute=900, max_concurrent=4, daily_tokens=1000)
    share = lim.divided(3)
    assert (share.requests_per_minute, share.tokens_per_minute, share.max_concurrent, share.daily_tokens) == \
        (20, 300, 1, 333)
    assert share.burst == pytest.approx(10 / 3) and lim.divided(1) is lim


class FailingStore:
    """A shared store that answers with the usage ``used`` until it is ``down``."""

    url = "redis://store"

    def __init__(self, day: int, month: int, day_used: int, month_used: int):
        self.seen, self.down = (day, month, day_used, month_used), False

    async def reserve(self, tenant, limits, cost, *, hold=None):
        if self.down:
            raise ConnectionError("store down")
        day, month, day_used, month_used = self.seen
        return Decision(None, day=day, month=month, day_used=day_used + cost, month_used=month_used + cost,
                        source="redis", cost=cost)


# Noon (UTC) of a fixed day, the wall clock the test runs on: with the real one, a run across
# midnight compared the store's "today" with the next day's (a CI run at 00:16 UTC failed so).
NOON = 20_793 * 86400 + 43_200
TODAY = NOON // 86400


@pytest.mark.parametrize("seen_day, seen_month, day_used, month_used, gateways, admitted", [
    # the store last said 920 of 1000 today (the 20 reserved then included): 80 left, 40 each of 2 gateways
    (TODAY, month_of(TODAY)[0], 900, 900, 2, [True, True, False]),
    (TODAY, month_of(TODAY)[0], 1000, 1000, 1, [False]),  # over its daily quota: still over through the outage
    (TODAY, month_of(TODAY)[0], 100, 49_980, 1, [False]),  # this month's quota: 0 left
    (TODAY - 1, month_of(TODAY)[0], 995, 1000, 1, [True, True]),  # seen yesterday: today is whole (1000, one gateway)
    (TODAY - 1, month_of(TODAY)[0], 995, 1000, 50, [True, False]),  # ... and 1/50 of it per gateway: 20
])
def test_a_store_outage_keeps_what_the_store_said_was_used(seen_day, seen_month, day_used, month_used, gateways,
                                                          admitted, monkeypatch):
    """on_failure `local`: each gateway's share of a quota is of what was left at the store's last
    answer, not of the whole quota afresh."""
    from cluster.config.auth import TenantConfig
    from cluster.tenancy.service import Tenancy

    monkeypatch.setattr(time, "time", lambda: NOON)

    store = FailingStore(seen_day, seen_month, day_used, month_used)
    t = Tenancy({"t": TenantConfig(daily_tokens=1000, monthly_tokens=50_000)}, store=store,
                gateways=lambda: gateways, clock=lambda: 0.0)

    async def go():
        assert (await t.admit("t", "m", cost=20, estimate=20)).decision.admitted
        store.down = True
        return [(await t.admit("t", "m", cost=20, estimate=20)).decision.admitted for _ in admitted]

    assert asyncio.run(go()) == admitted


def test_the_requests_limit_header_is_the_bucket_remaining_counts_down_from():
    """OpenAI's x-ratelimit-limit-requests is "the maximum number of requests that are permitted
    before exhausting the rate limit" (60, remaining 59 after one request): the bucket's capacity.
    With a burst below the per-minute rate (the default: a tenth), the limit was the rate: 1000 with
    99 remaining on an idle tenant (a client reading remaining/limit saw 90% used); with a burst
    above it, remaining exceeded the limit."""
    store = LocalStore(clock=Clock())
    for lim, limit, remaining in ((Limits(requests_per_minute=1000, burst=100), "100", "99"),
                                  (Limits(requests_per_minute=60, burst=200), "200", "199"),
                                  (Limits(requests_per_minute=60, burst=60, tokens_per_minute=1000), "60", "59")):
        d = store.reserve_now(f"t{limit}", lim, 1)
        h = ratelimit_headers(d.requests, d.tokens)
        assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == (limit, remaining)
        assert int(h["x-ratelimit-remaining-requests"]) <= int(h["x-ratelimit-limit-requests"])


def test_the_shared_store_names_the_same_requests_limit(redis_server):
    from cluster.tenancy.redis_store import RedisStore

    url, _ = redis_server
    store = RedisStore(url)
    d = asyncio.run(store.reserve("t", Limits(requests_per_minute=1000, burst=100), 1))
    h = ratelimit_headers(d.requests, d.tokens)
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("100", "99")


def test_a_reservation_over_the_whole_bucket_is_not_worth_retrying():
    """cost > tokens_per_minute: no wait admits it. Retry-After 60 made the OpenAI SDK (langchain-openai)
    sleep 60 s before each of its 2 retries and LiteLLM's router 60 s before each of its own: minutes
    before the client saw the error. It says: do not retry; a refusal that clears keeps its Retry-After."""
    from cluster.gateway.admission.tenancy import _refusal
    from cluster.tenancy.service import Ticket

    store = LocalStore(clock=lambda: 1_700_000_000.0)
    lim = Limits(requests_per_minute=60, burst=1, tokens_per_minute=3000)
    too_large = _refusal("t", Ticket("t", "m", 2, store.reserve_now("t", lim, 4002), lim), 4002)
    assert too_large.status == 429 and too_large.code == "rate_limit_exceeded"
    assert too_large.headers == {"x-should-retry": "false"}
    assert store.reserve_now("t", lim, 10).admitted
    busy = _refusal("t", Ticket("t", "m", 2, store.reserve_now("t", lim, 10), lim), 10)  # the one request spent
    assert busy.headers == {"Retry-After": "1"} and "x-should-retry" not in busy.headers


def test_quota_gauge_without_a_shared_store():
    """owc_tenant_quota_used_ratio (the Tenants dashboard's quota panel) is set by the in-process
    store too: a gateway without gateway.store enforces daily/monthly quotas all the same."""
    from prometheus_client import CollectorRegistry

    from cluster.config.loader import parse_config
    from cluster.gateway.admission.tenancy import build_tenancy
    from cluster.gateway.observability.metrics import GatewayMetrics

    cfg = parse_config({"models": {"m": {"source": "external"}},
                        "gateway": {"api_keys_env": None, "tenants": {"t": {"daily_tokens": 1000, "monthly_tokens": 4000}}}})
    assert cfg.gateway.store is None
    registry = CollectorRegistry()
    tenancy = build_tenancy(cfg, GatewayMetrics(registry))
    assert asyncio.run(tenancy.admit("t", "m", cost=100, estimate=100)).decision.admitted
    assert registry.get_sample_value("owc_tenant_quota_used_ratio", {"tenant": "t", "period": "day"}) == 0.1
    assert registry.get_sample_value("owc_tenant_quota_used_ratio", {"tenant": "t", "period": "month"}) == 0.025
