"""The line ledger (cluster.batch.ledger) in Redis, shared by every gateway process: per batch
(`owc:bl:{batch id}:…`) the claim cursor, a sorted set of leases scored by their expiry, a hash
of done lines (line -> outcome:owner, set once: HSETNX) with their counts and, set in the same
script, the charges not settled yet (line -> charge), and the close lease.
Claims and finishes are one Lua script each, so two processes never take the same live line
and a line is done once."""

from __future__ import annotations

from cluster.batch.ledger import OK, Progress
from cluster.tenancy.redis_client import fail_fast_client

CLAIM = """
local now, ttl, n, total = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for _, l in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, n)) do
  if redis.call('HEXISTS', KEYS[3], l) == 0 then
    redis.call('ZADD', KEYS[1], now + ttl, l)
    table.insert(out, l)
  else
    redis.call('ZREM', KEYS[1], l)
  end
end
local c = tonumber(redis.call('GET', KEYS[2]) or '0')
while #out < n and c < total do
  redis.call('ZADD', KEYS[1], now + ttl, c)
  table.insert(out, tostring(c))
  c = c + 1
end
redis.call('SET', KEYS[2], c)
return out
"""

FINISH = """
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2] .. ':' .. ARGV[3]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[4], ARGV[1], ARGV[4]) end
return 1
"""

RENEW = """
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i]) end
return 1
"""


def _k(batch_id: str, part: str) -> str:
    return "owc:bl:{" + batch_id + "}:" + part


class RedisLedger:
    def __init__(self, url: str, *, timeout_s: float = 2.0):
        self.url = url
        self._r = fail_fast_client(url, timeout_s=timeout_s)
        self._claim = self._r.register_script(CLAIM)
        self._finish = self._r.register_script(FINISH)
        self._renew = self._r.register_script(RENEW)

    async def claim(self, batch_id: str, *, total: int, n: int, now: float, ttl_s: float) -> list[int]:
        got = await self._claim(keys=[_k(batch_id, "lease"), _k(batch_id, "cur"), _k(batch_id, "done")],
                                args=[repr(now), repr(ttl_s), n, total])
        return [int(x) for x in got]

    async def renew(self, batch_id: str, lines: list[int], *, now: float, ttl_s: float) -> None:
        if lines:
            await self._renew(keys=[_k(batch_id, "lease")], args=[repr(now + ttl_s), *lines])

    async def release(self, batch_id: str, lines: list[int]) -> None:
        if lines:
            await self._renew(keys=[_k(batch_id, "lease")], args=["0", *lines])  # expired: claimed again first

    async def finish(self, batch_id: str, line: int, *, outcome: str, owner: str, charge: str = "") -> bool:
        return bool(await self._finish(keys=[_k(batch_id, "lease"), _k(batch_id, "done"), _k(batch_id, "n"),
                                             _k(batch_id, "charge")], args=[line, outcome, owner, charge]))

    async def charges(self, batch_id: str) -> dict[int, str]:
        return {int(k): v.decode() for k, v in (await self._r.hgetall(_k(batch_id, "charge"))).items()}

    async def settled(self, batch_id: str, line: int) -> None:
        await self._r.hdel(_k(batch_id, "charge"), line)

    async def progress(self, batch_id: str, *, now: float) -> Progress:
        async with self._r.pipeline(transaction=False) as p:
            p.hmget(_k(batch_id, "n"), OK, "err")
            p.get(_k(batch_id, "cur"))
            p.zcount(_k(batch_id, "lease"), f"({now!r}", "+inf")
            (ok, err), cur, live = await p.execute()
        return Progress(int(ok or 0), int(err or 0), int(cur or 0), int(live))

    async def done_lines(self, batch_id: str) -> dict[int, tuple[str, str]]:
        out = {}
        for k, v in (await self._r.hgetall(_k(batch_id, "done"))).items():
            outcome, _, owner = v.decode().partition(":")
            out[int(k)] = (outcome, owner)
        return out

    async def take_close(self, batch_id: str, owner: str, *, ttl_s: float) -> bool:
        key = _k(batch_id, "close")
        if await self._r.set(key, owner, nx=True, px=int(ttl_s * 1000)):
            return True
        if (await self._r.get(key) or b"").decode() == owner:
            await self._r.pexpire(key, int(ttl_s * 1000))
            return True
        return False

    async def drop(self, batch_id: str) -> None:
        await self._r.delete(*(_k(batch_id, p) for p in ("lease", "cur", "done", "n", "close", "charge")))

    async def close(self) -> None:
        await self._r.aclose()
