"""Engine slots shared between gateway processes, in the tenancy Redis: each process's counts
of a saturated model (per tenant, per replica: cluster.gateway.flowcontrol.shared) under its
own key with a short TTL, and the other live processes' counts summed, in one Lua script per
exchange (one round trip, Redis's clock). A process that dies stops refreshing its key: its
counts expire within ``ttl_s``. The store down or slower than ``timeout_s``: no shared view
(the fair queue decides per process) and no call for ``retry_s``; reported through ``on_up``
and ``on_error`` (the gateway's metrics). Never imports the gateway."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping

from cluster.tenancy.redis_client import fail_fast_client

log = logging.getLogger(__name__)

# KEYS: none (built from the model's hash tag, as cluster.tenancy.lua does for tenants).
# ARGV: key prefix, this process's id, TTL ms, then field, count pairs (this process's counts).
# Returns the other live processes' fields summed, flat: field, count, ...; and for each tenant
# field ``t:X`` the least any other live process holds, as ``l:t:X`` (0 where one has none).
EXCHANGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p, me, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local mine = p .. ':g:' .. me
redis.call('DEL', mine)
redis.call('HSET', mine, '~', '0')
for i = 4, #ARGV, 2 do redis.call('HSET', mine, ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', mine, ttl)
redis.call('ZADD', p .. ':gw', now + ttl, me)
redis.call('ZREMRANGEBYSCORE', p .. ':gw', '-inf', now)
redis.call('PEXPIRE', p .. ':gw', ttl)
local sums, names, least, held, others = {}, {}, {}, {}, 0
for _, g in ipairs(redis.call('ZRANGE', p .. ':gw', 0, -1)) do
  if g ~= me then
    others = others + 1
    local kv = redis.call('HGETALL', p .. ':g:' .. g)
    for i = 1, #kv, 2 do
      local f, v = kv[i], tonumber(kv[i + 1])
      if f ~= '~' then
        if sums[f] == nil then sums[f] = 0; names[#names + 1] = f; least[f] = v; held[f] = 0 end
        sums[f] = sums[f] + v
        if v < least[f] then least[f] = v end
        held[f] = held[f] + 1
      end
    end
  end
end
local out = {}
for _, f in ipairs(names) do
  out[#out + 1] = f; out[#out + 1] = tostring(sums[f])
  if string.sub(f, 1, 2) == 't:' then
    out[#out + 1] = 'l:' .. f
    out[#out + 1] = tostring(held[f] < others and 0 or least[f])
  end
end
return out
"""


def _noop(*_a) -> None:
    return None


def key_prefix(model: str) -> str:
    return "owc:fq:{" + model + "}"


class RedisSlotShare:
    """``exchange(model, fields)``: this process's fields out, the others' summed in (None:
    no shared view now)."""

    def __init__(self, url: str, *, ttl_s: float = 2.0, timeout_s: float = 0.05, retry_s: float = 1.0,
                 on_up: Callable[[bool], None] = _noop, on_error: Callable[[], None] = _noop,
                 on_exchange: Callable[[], None] = _noop, clock: Callable[[], float] = time.monotonic):
        self.url = url
        self.id = uuid.uuid4().hex[:16]  # this gateway process
        self._r = fail_fast_client(url, timeout_s=timeout_s, decode_responses=True)
        self._script = self._r.register_script(EXCHANGE)
        self._ttl_ms = str(int(ttl_s * 1000))
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._on_up, self._on_error, self._on_exchange = on_up, on_error, on_exchange
        self._clock = clock
        self._down_until = 0.0
        on_up(True)

    @property
    def up(self) -> bool:
        return self._down_until == 0.0

    async def exchange(self, model: str, mine: Mapping[str, int]) -> dict[str, int] | None:
        if self._down_until and self._clock() < self._down_until:
            return None
        args = [key_prefix(model), self.id, self._ttl_ms]
        for f, n in mine.items():
            args += [f, str(int(n))]
        self._on_exchange()
        try:
            flat = await asyncio.wait_for(self._script(args=args), self._timeout_s)
        except Exception as e:  # down, stalled, or nonsense: per-process decisions, never the request's error
            self._failed(e)
            return None
        if self._down_until:
            log.warning("fair-share store %s is back: shares across gateway processes again", self.url)
            self._down_until = 0.0
            self._on_up(True)
        return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def _failed(self, e: Exception) -> None:
        self._on_error()
        if not self._down_until:
            log.warning("fair-share store %s failed (%r): fair queueing per gateway process for now", self.url, e)
            self._on_up(False)
        self._down_until = self._clock() + self._retry_s

    async def close(self) -> None:
        await self._r.aclose()
