"""The shared store: Redis, every update one Lua script (cluster.tenancy.lua). Concurrency
slots are leases that this gateway renews while its requests run: a dead gateway's slots
expire within lease_ttl_s."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from cluster.tenancy.charging import Window
from cluster.tenancy.lua import RELEASE_LINES, RENEW, RESERVE, SETTLE, SETTLE_LINE
from cluster.tenancy.model import Decision, Limits, day_name
from cluster.tenancy.redis_client import fail_fast_client

USAGE_INDEX = "owc:usage"
USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "reasoning_tokens", "errors")


def prefix(tenant: str) -> str:
    return "owc:t:{" + tenant + "}"


def usage_key(day: int, tenant: str, model: str) -> tuple[str, str]:
    """(the usage hash of tenant x model x day, its member in the usage index)."""
    member = f"{day_name(day)}\t{tenant}\t{model}"
    return "owc:u:" + member.replace("\t", ":"), member


def line_keys(tenant: str, batch_id: str) -> tuple[str, str]:
    """(a batch's line holds, its settled lines) under the tenant's prefix."""
    return prefix(tenant) + ":bh:" + batch_id, prefix(tenant) + ":bs:" + batch_id


def _arg(v) -> str:
    return "-1" if v is None else repr(v)


class RedisStore:
    def __init__(self, url: str, *, lease_ttl_s: float = 30.0, timeout_s: float = 1.0, usage_ttl_days: int = 400):
        self.url = url
        self._r = fail_fast_client(url, timeout_s=timeout_s, decode_responses=True)
        self._reserve = self._r.register_script(RESERVE)
        self._settle = self._r.register_script(SETTLE)
        self._renew = self._r.register_script(RENEW)
        self._settle_line = self._r.register_script(SETTLE_LINE)
        self._release_lines = self._r.register_script(RELEASE_LINES)
        self.lease_ttl_s = lease_ttl_s
        self._usage_ttl_s = usage_ttl_days * 86400
        self._leases: dict[str, str] = {}  # lease -> its concurrency set, while the request runs
        self._renewer: asyncio.Task | None = None

    async def reserve(self, tenant: str, limits: Limits, cost: int, *, hold: tuple[str, int] | None = None) -> Decision:
        """``hold``: (batch id, line) of a batch line: reserved once per line (a rerun is admitted on
        the hold its earlier run left), settled by ``settle_line``."""
        hk, hf = (line_keys(tenant, hold[0])[0], str(hold[1])) if hold else ("", "")
        lease = uuid.uuid4().hex if limits.max_concurrent is not None else ""
        burst = limits.burst if limits.burst is not None else 1
        r = await self._reserve(args=[
            prefix(tenant), _arg(limits.requests_per_minute), repr(float(burst)), _arg(limits.tokens_per_minute),
            str(cost), _arg(limits.max_concurrent), lease, repr(self.lease_ttl_s), _arg(limits.daily_tokens),
            _arg(limits.monthly_tokens), hk, hf,
        ])
        code, retry, rq, rq_reset, tk, tk_reset, dused, mused, day, month, dreset, mreset = r
        ok = code == "ok"
        if ok and lease:
            self._leases[lease] = prefix(tenant) + ":cc"
            self._start_renewer()
        return Decision(
            refused=None if ok else code, retry_s=float(retry),
            requests=Window(float(burst), float(rq), float(rq_reset)) if limits.requests_per_minute else None,
            tokens=Window(limits.tokens_per_minute, float(tk), float(tk_reset)) if limits.tokens_per_minute else None,
            lease=lease if ok and lease else None, day=int(float(day)), month=int(float(month)),
            day_used=None if float(dused) < 0 else int(float(dused)),
            month_used=None if float(mused) < 0 else int(float(mused)),
            day_reset_s=float(dreset), month_reset_s=float(mreset), source="redis", cost=cost if ok else 0,
        )

    async def settle(self, tenant: str, model: str, d: Decision, *, limits: Limits, delta: int,
                     usage: tuple[int, int, int, int, int] | None) -> None:
        """``usage``: (requests, prompt, completion, reasoning tokens, errors) to record (None: none)."""
        if d.lease:
            self._leases.pop(d.lease, None)
        key, member = usage_key(d.day, tenant, model) if usage is not None else ("", "")
        usage = usage or (0, 0, 0, 0, 0)
        await self._settle(args=[
            prefix(tenant), _arg(limits.tokens_per_minute), str(delta), d.lease or "", str(d.day), str(d.month),
            "1" if limits.daily_tokens is not None else "0", "1" if limits.monthly_tokens is not None else "0",
            key, member, *(str(u) for u in usage), str(self._usage_ttl_s),
        ])

    async def settle_line(self, tenant: str, model: str, batch_id: str, line: int, *, tokens: int, day: int,
                          month: int, limits: Limits, usage: tuple[int, int, int, int, int] | None) -> bool:
        """A batch line's charge, once per line (True: this call made it); its hold refunded."""
        hk, sk = line_keys(tenant, batch_id)
        key, member = usage_key(day, tenant, model) if usage is not None else ("", "")
        return bool(await self._settle_line(args=[
            prefix(tenant), hk, sk, str(line), str(tokens), str(day if limits.daily_tokens is not None else -1),
            str(month if limits.monthly_tokens is not None else -1), key, member,
            *(str(u) for u in usage or (0, 0, 0, 0, 0)), str(self._usage_ttl_s), str(day),
        ]))

    async def release_lines(self, tenant: str, batch_id: str, lines: list[int] | None, *, settled_only: bool) -> int:
        """Holds of ``lines`` (None: all the batch's) refunded; ``settled_only``: only of lines charged."""
        hk, sk = line_keys(tenant, batch_id)
        return int(await self._release_lines(args=[prefix(tenant), hk, sk, "1" if settled_only else "0",
                                                   *(str(x) for x in lines or ())])) if lines != [] else 0

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        while self._leases:
            await asyncio.sleep(self.lease_ttl_s / 3)
            leases = list(self._leases.items())
            if not leases:
                break
            with contextlib.suppress(Exception):  # the store down: the leases lapse, as a dead gateway's would
                await self._renew(keys=[k for _, k in leases], args=[repr(self.lease_ttl_s), *(lease for lease, _ in leases)])

    async def usage(self, *, since_day: int = 0, tenant: str | None = None) -> list[dict]:
        """Usage records from ``since_day`` (UTC day number) on, one per tenant x model x day."""
        members = await self._r.zrangebyscore(USAGE_INDEX, since_day, "+inf")
        rows = []
        for member in members:
            day, t, model = member.split("\t", 2)
            if tenant is not None and t != tenant:
                continue
            values = await self._r.hgetall("owc:u:" + member.replace("\t", ":"))
            if values:
                rows.append({"day": day, "tenant": t, "model": model, **{f: int(values.get(f, 0)) for f in USAGE_FIELDS}})
        return sorted(rows, key=lambda r: (r["day"], r["tenant"], r["model"]))

    async def ping(self) -> bool:
        return bool(await self._r.ping())

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        await self._r.aclose()
