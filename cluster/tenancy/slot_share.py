"""Engine slots shared between gateway processes, in the tenancy Redis: each process's counts
of a saturated model (per tenant, per replica: cluster.gateway.flowcontrol.shared) under its
own key with a short TTL, and the other live processes' counts summed, in one Lua script per
exchange (one round trip, Redis's clock). A process that dies stops refreshing its key: its
counts expire within ``ttl_s``. The store down or slower than ``timeout_s``: no shared view
(the fair queue decides per process) and no call for ``retry_s``; reported through ``on_up``
and ``on_error`` (the gateway's metrics).

An exchange that publishes a release (``notify``) also tells the other processes on the model's
channel (``owc:fq:{model}:freed``, Redis pub/sub, from the same script: after the counts it
carries are stored), so that a process whose requests wait for a slot looks again at once
instead of at its next poll; ``listen`` subscribes this process, on a connection of its own
(a subscription blocks on its reads: the exchanges' fail-fast bound would cut it), and
reconnects after ``retry_s`` when the store drops it. A store whose ACL denies the channel
loses only the notices: the script calls PUBLISH with pcall and the exchange goes on. Never
imports the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping

from cluster.tenancy.redis_client import fail_fast_client

log = logging.getLogger(__name__)

# KEYS: none (built from the model's hash tag, as cluster.tenancy.lua does for tenants).
# ARGV: key prefix, this process's id, TTL ms, the channel to tell of a release ('' none), then
# field, count pairs (this process's counts).
# Returns the other live processes' fields summed, flat: field, count, ...; and for each tenant
# field ``t:X`` the least any other live process holds, as ``l:t:X`` (0 where one has none).
EXCHANGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p, me, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local mine = p .. ':g:' .. me
redis.call('DEL', mine)
redis.call('HSET', mine, '~', '0')
for i = 5, #ARGV, 2 do redis.call('HSET', mine, ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', mine, ttl)
if ARGV[4] ~= '' then redis.pcall('PUBLISH', ARGV[4], me) end
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


FREED = ":freed"  # the channel suffix: a process released slots of the model


def freed_model(channel: str) -> str | None:
    """The model a release notice's channel names (None: not one of ours)."""
    head = key_prefix("")[:-1]
    if channel.startswith(head) and channel.endswith("}" + FREED):
        return channel[len(head):-len(FREED) - 1]
    return None


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
        self._listener: asyncio.Task | None = None
        on_up(True)

    @property
    def up(self) -> bool:
        return self._down_until == 0.0

    async def exchange(self, model: str, mine: Mapping[str, int], notify: bool = False) -> dict[str, int] | None:
        if self._down_until and self._clock() < self._down_until:
            return None
        args = [key_prefix(model), self.id, self._ttl_ms, key_prefix(model) + FREED if notify else ""]
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

    def listen(self, on_freed: Callable[[str], None]) -> None:
        """Call ``on_freed(model)`` for each release another process publishes (from a task of
        this loop, until ``close``)."""
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen(on_freed))

    async def _listen(self, on_freed: Callable[[str], None]) -> None:
        import redis.asyncio as aioredis

        failed = False
        while True:
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=self._timeout_s, decode_responses=True)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(key_prefix("*") + FREED)
                if failed:
                    log.warning("fair-share store %s: release notices again", self.url)
                    failed = False
                async for msg in pubsub.listen():
                    model = freed_model(msg.get("channel") or "")
                    if model is not None and msg.get("data") != self.id and msg.get("type") == "pmessage":
                        on_freed(model)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the polls still find the room; notices resume with the store
                if not failed:
                    log.warning("fair-share store %s: no release notices (%r); other processes' releases are "
                                "seen at the next poll until it is back", self.url, e)
                    failed = True
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                    await client.aclose()
            await asyncio.sleep(self._retry_s)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        await self._r.aclose()
