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
instead of at its next poll; ``listen`` subscribes this process to a model's channel (at the
model's first exchange), on a connection of its own (a subscription waits on its reads: the
exchanges' fail-fast bound would cut it), and reconnects after ``retry_s`` when the store drops
it. A store whose ACL denies the channel loses only the notices: the script calls PUBLISH with
pcall and the exchange goes on; the subscription's refusal is logged once and asked again after
``DENIED_RETRY_S``. Never imports the gateway."""

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
# Returns the other live processes' fields summed, flat: field, count, ...; and for each field
# ``v:X`` (tenant X's requests that can be taken back) the least any other live process holds,
# as ``l:v:X`` (0 where one has none).
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
  if string.sub(f, 1, 2) == 'v:' then
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
DENIED_RETRY_S = 60.0  # a store that refused the subscription is asked again this much later


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
        self._models: list[str] = []  # whose release channels this process listens on
        self._on_freed: Callable[[str], None] | None = None
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

    def listen(self, model: str, on_freed: Callable[[str], None]) -> None:
        """From now on (until ``close``), ``on_freed(model)`` for each release of ``model``
        another process publishes, from a task of this loop."""
        self._on_freed = on_freed
        if model not in self._models:
            self._models.append(model)
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ResponseError

        failed = False
        while True:
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=self._timeout_s, socket_keepalive=True,
                                             health_check_interval=30, retry=Retry(NoBackoff(), 0),
                                             decode_responses=True)
            pubsub = client.pubsub()
            wait_s = self._retry_s
            try:
                subscribed = 0
                while True:
                    if subscribed < len(self._models):  # a model's first exchange: its channel, confirmed
                        new = [key_prefix(m) + FREED for m in self._models[subscribed:]]
                        await pubsub.subscribe(*new)
                        await self._confirmed(pubsub, len(new))
                        subscribed += len(new)
                        if failed:
                            log.warning("fair-share store %s: release notices again", self.url)
                            failed = False
                    self._deliver(await pubsub.get_message(timeout=1.0))
            except asyncio.CancelledError:
                raise
            except ResponseError as e:  # the store's ACL denies the channel (NOPERM): not worth asking every second
                if not failed:
                    log.warning("fair-share store %s refuses release notices (%s): other processes' releases are "
                                "seen at the polls; grant this user '+subscribe +publish &owc:fq:*'", self.url, e)
                    failed = True
                wait_s = DENIED_RETRY_S
            except Exception as e:  # noqa: BLE001 - down or dropped: the polls still find the room
                if not failed:
                    log.warning("fair-share store %s: no release notices (%r); other processes' releases are "
                                "seen at the polls until it is back", self.url, e)
                    failed = True
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(wait_s)

    async def _confirmed(self, pubsub, n: int) -> None:
        """Until the store confirmed ``n`` subscriptions (a refusal raises); notices read meanwhile delivered."""
        while n:
            msg = await pubsub.get_message(timeout=1.0)
            if msg is None:
                raise TimeoutError("no confirmation of the release channels' subscription")
            if msg["type"] == "subscribe":
                n -= 1
            else:
                self._deliver(msg)

    def _deliver(self, msg: dict | None) -> None:
        if msg is None or msg["type"] != "message" or msg["data"] == self.id:
            return
        model = freed_model(msg["channel"])
        if model is not None and self._on_freed is not None:
            try:
                self._on_freed(model)
            except Exception:  # a bug there is not the store's failure: the next notice is delivered as ever
                log.exception("release notice for %s", model)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        await self._r.aclose()
