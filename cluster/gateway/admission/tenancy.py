"""The gateway's side of tenancy (cluster.tenancy): a ticket per request whose `send` puts
OpenAI's x-ratelimit-* headers on the response, the admission decision turned into an
OpenAI error (429 rate_limit_exceeded / insufficient_quota), and the settlement with what
the forwarder delivered."""

from __future__ import annotations

import datetime as dt
import logging
import os

from cluster.config.schema import OwcConfig
from cluster.gateway.context import Delivery, Job, Send
from cluster.gateway.errors import OpenAIError
from cluster.gateway.observability.children import Children
from cluster.gateway.observability.metrics import GatewayMetrics
from cluster.tenancy.charging import Outcome, plain_number, prompt_estimate, ratelimit_header_pairs, reservation, retry_after
from cluster.tenancy.model import CONCURRENCY, DAILY, MONTHLY, TOO_LARGE, UNAVAILABLE, month_of
from cluster.tenancy.service import Hooks, Tenancy, Ticket

log = logging.getLogger(__name__)


class RequestTicket:
    """One request's tenancy state; ``send`` adds the rate-limit headers once admission knows them."""

    __slots__ = ("headers", "ticket", "line", "_send")

    def __init__(self, send: Send):
        self.headers: list[tuple[bytes, bytes]] = []
        self.ticket: Ticket | None = None
        self.line = None  # a batch line's LineCall: its charge is left on it for the batch runner
        self._send = send

    async def send(self, message: dict) -> None:
        if self.headers and message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *self.headers]}
        await self._send(message)


def build_tenancy(config: OwcConfig, metrics: GatewayMetrics) -> Tenancy:
    gw = config.gateway
    child = Children()  # the quota gauge is set on every request
    hooks = Hooks(store_error=metrics.tenancy_store_errors.inc,
                  store_up=lambda up: metrics.tenancy_store_up.set(1 if up else 0),
                  quota=lambda t, period, ratio: child(metrics.tenant_quota_used, t, period).set(ratio))
    store = None
    if gw.store is not None:
        from cluster.tenancy.redis_store import RedisStore

        url = (os.environ.get(gw.store.url_env) if gw.store.url_env else None) or gw.store.url
        store = RedisStore(url, lease_ttl_s=gw.store.lease_ttl_s, timeout_s=gw.store.timeout_s,
                           usage_ttl_days=gw.store.usage_retention_days)
    return Tenancy(gw.tenants, store=store, on_failure=gw.store.on_failure if gw.store else "local",
                   gateways=lambda: gw.replicas.start, hooks=hooks if store is not None else Hooks(quota=hooks.quota))


class GatewayTenancy:
    def __init__(self, config: OwcConfig, metrics: GatewayMetrics, tenancy: Tenancy | None = None):
        self._config = config
        self.tenancy = tenancy or build_tenancy(config, metrics)
        self._active = self.tenancy.active

    def ticket(self, send: Send) -> RequestTicket:
        return RequestTicket(send)

    async def admit(self, rt: RequestTicket, job: Job) -> None:
        """Reserve the job's tokens or raise its 429 (the headers go on either answer)."""
        if not self._active:
            return
        gw = self._config.gateway
        tenant_cfg = gw.tenants.get(job.tenant)
        cap = (tenant_cfg.max_output_tokens if tenant_cfg else None) or gw.limits.max_output_tokens
        allowance = gw.output_allowance.get(job.model) or gw.output_allowance.get("*")
        defaults = {"default": allowance.default, **allowance.by_effort} if allowance else {}
        estimate = prompt_estimate(job.data)  # walks every string of the prompt: once
        cost = reservation(job.data, cap=cap, defaults=defaults, estimate=estimate)
        # A batch line: charged to the tenant's daily and monthly quotas, not its per-minute limits or
        # concurrency (its batch never throttles its interactive traffic); its usage recorded as batch:<model>.
        model = job.model if job.batch is None else f"batch:{job.model}"
        line = job.batch
        t = await self.tenancy.admit(job.tenant, model, cost=cost, estimate=estimate,
                                     batch=line is not None, line=None if line is None else (line.batch_id, line.line))
        d = t.decision
        rt.headers = ratelimit_header_pairs(d.requests, d.tokens)
        if d.admitted:
            rt.ticket, rt.line = t, line
            return
        raise _refusal(job.tenant, t, cost)

    async def settle(self, rt: RequestTicket, status: int, delivery: Delivery) -> None:
        if rt.ticket is None:
            return
        events = (1 + len(delivery.itl)) if delivery.ttft_s is not None else 0
        outcome = Outcome(status, delivery.prompt_tokens, delivery.completion_tokens, events)
        if rt.line is not None:  # a batch line is charged once per line, by the runner whose done-mark won
            rt.line.charge = self.tenancy.line_charge(rt.ticket, outcome, reasoning=delivery.reasoning_tokens or 0)
            return
        try:
            await self.tenancy.settle(rt.ticket, outcome, reasoning=delivery.reasoning_tokens or 0)
        except Exception:  # never the client's problem: the request is over
            log.exception("tenancy settlement of a %s request failed", rt.ticket.tenant)


def _refusal(tenant: str, t: Ticket, cost: int) -> OpenAIError:
    d, lim = t.decision, t.limits
    retry = {"Retry-After": retry_after(d.retry_s)}
    if d.refused in (DAILY, MONTHLY):
        period, limit = ("daily", lim.daily_tokens) if d.refused == DAILY else ("monthly", lim.monthly_tokens)
        period = "daily batch" if t.batch_quota else period  # batch_daily_tokens
        reset_day = d.day + 1 if d.refused == DAILY else month_of(d.day)[1]  # a UTC midnight, exactly
        reset = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=reset_day)
        return OpenAIError(429, f"tenant '{tenant}' has used its {period} quota of {limit} tokens; it resets at "
                           f"{reset.strftime('%Y-%m-%dT%H:%M:%SZ')}", type="insufficient_quota",
                           code="insufficient_quota", headers=retry)
    if d.refused == CONCURRENCY:
        return OpenAIError(429, f"tenant '{tenant}' has {lim.max_concurrent} requests in flight, its limit; retry "
                           "shortly", type="rate_limit_error", code="concurrency_limit_exceeded", headers=retry)
    if d.refused == UNAVAILABLE:
        return OpenAIError(429, "the tenancy store is unavailable and limits fail closed; retry shortly",
                           type="rate_limit_error", code="tenancy_store_unavailable", headers=retry)
    if d.refused == TOO_LARGE:
        # Waiting never admits it (it is more than the whole bucket): no Retry-After, which the
        # OpenAI SDK (up to 60 s) and LiteLLM's router obey before each of their retries, and
        # x-should-retry: false, which the OpenAI and Anthropic SDKs obey.
        return OpenAIError(429, f"request too large: it reserves {cost} tokens, more than "
                           f"tenant '{tenant}''s limit of {plain_number(lim.tokens_per_minute)} tokens per minute; lower "
                           "max_tokens", type="rate_limit_error", code="rate_limit_exceeded",
                           headers={"x-should-retry": "false"})
    what = f"{plain_number(lim.requests_per_minute)} requests" if d.refused == "requests" \
        else f"{plain_number(lim.tokens_per_minute)} tokens"
    return OpenAIError(429, f"tenant '{tenant}' is over its limit of {what} per minute", type="rate_limit_error",
                       code="rate_limit_exceeded", headers=retry)
