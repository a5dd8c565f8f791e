"""The records in Redis, shared by every gateway process. Keys carry the tenant as a hash tag
(`owc:b:{tenant}:…`, one slot per tenant): a record is found only under its own tenant's keys.
A file's record, its place in the tenant's list and expiry set and the tenant's stored bytes
change together in one Lua script; a batch's update is a WATCH/MULTI transaction around the
pure state machine."""

from __future__ import annotations

from collections.abc import Callable

from cluster.batch.records import BatchRecord, FileRecord
from cluster.batch.states import TERMINAL
from cluster.tenancy.redis_client import fail_fast_client

TENANTS = "owc:b:tenants"  # every tenant with records (the sweep's list)
ACTIVE = "owc:b:active"  # "<batch id>:<tenant>" of every batch a runner has work on (a batch id has no ':')

ADD_FILE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return 0 end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[5])
return 1
"""

REMOVE_FILE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local rec = cjson.decode(raw)
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local left = redis.call('DECRBY', KEYS[4], rec['bytes'])
if left <= 0 then redis.call('DEL', KEYS[4]) end
return raw
"""


def _k(tenant: str, *parts: str) -> str:
    return ":".join(("owc:b:{" + tenant + "}", *parts))


class RedisIndex:
    def __init__(self, url: str, *, timeout_s: float = 2.0):
        self.url = url
        self._r = fail_fast_client(url, timeout_s=timeout_s)
        self._add = self._r.register_script(ADD_FILE)
        self._remove = self._r.register_script(REMOVE_FILE)

    async def add_file(self, rec: FileRecord, *, max_tenant_bytes: int) -> bool:
        t = rec.tenant
        await self._r.sadd(TENANTS, t)
        ok = await self._add(
            keys=[_k(t, "bytes"), _k(t, "f", rec.id), _k(t, "files"), _k(t, "fexp")],
            args=[rec.bytes, max_tenant_bytes, rec.dumps(), repr(rec.created), rec.id, rec.expires_at])
        return bool(ok)

    async def file(self, tenant: str, file_id: str) -> FileRecord | None:
        raw = await self._r.get(_k(tenant, "f", file_id))
        return None if raw is None else FileRecord.loads(raw)

    async def files(self, tenant: str) -> list[FileRecord]:
        ids = await self._r.zrevrange(_k(tenant, "files"), 0, -1)
        return await self._many(tenant, "f", ids, FileRecord)

    async def _many(self, tenant: str, kind: str, ids: list, cls) -> list:
        if not ids:
            return []
        raws = await self._r.mget([_k(tenant, kind, i.decode()) for i in ids])
        return [cls.loads(r) for r in raws if r is not None]

    async def remove_file(self, tenant: str, file_id: str) -> FileRecord | None:
        raw = await self._remove(keys=[_k(tenant, "f", file_id), _k(tenant, "files"), _k(tenant, "fexp"),
                                       _k(tenant, "bytes")], args=[file_id])
        return None if raw is None else FileRecord.loads(raw)

    async def due_files(self, now: float) -> list[FileRecord]:
        out: list[FileRecord] = []
        for t in await self._r.smembers(TENANTS):
            tenant = t.decode()
            ids = await self._r.zrangebyscore(_k(tenant, "fexp"), "-inf", now)
            out += await self._many(tenant, "f", ids, FileRecord)
        return out

    async def tenant_bytes(self, tenant: str) -> int:
        return int(await self._r.get(_k(tenant, "bytes")) or 0)

    async def add_batch(self, rec: BatchRecord) -> None:
        t = rec.tenant
        await self._r.sadd(TENANTS, t)
        async with self._r.pipeline(transaction=True) as p:
            p.set(_k(t, "b", rec.id), rec.dumps())
            p.zadd(_k(t, "batches"), {rec.id: rec.created})
            p.zadd(_k(t, "bexp"), {rec.id: rec.expires_at})
            p.zadd(ACTIVE, {f"{rec.id}:{t}": rec.created})
            await p.execute()

    async def batch(self, tenant: str, batch_id: str) -> BatchRecord | None:
        raw = await self._r.get(_k(tenant, "b", batch_id))
        return None if raw is None else BatchRecord.loads(raw)

    async def batches(self, tenant: str) -> list[BatchRecord]:
        ids = await self._r.zrevrange(_k(tenant, "batches"), 0, -1)
        return await self._many(tenant, "b", ids, BatchRecord)

    async def update_batch(self, tenant: str, batch_id: str,
                           change: Callable[[BatchRecord], BatchRecord]) -> BatchRecord | None:
        from redis.exceptions import WatchError

        key = _k(tenant, "b", batch_id)
        async with self._r.pipeline(transaction=True) as p:
            while True:
                try:
                    await p.watch(key)
                    raw = await p.get(key)
                    if raw is None:
                        return None
                    new = change(BatchRecord.loads(raw))
                    p.multi()
                    p.set(key, new.dumps())
                    if new.status in TERMINAL:
                        p.zrem(_k(tenant, "bexp"), batch_id)
                    await p.execute()
                    return new
                except WatchError:
                    continue

    async def due_batches(self, now: float) -> list[BatchRecord]:
        out: list[BatchRecord] = []
        for t in await self._r.smembers(TENANTS):
            tenant = t.decode()
            ids = await self._r.zrangebyscore(_k(tenant, "bexp"), "-inf", now)
            out += [b for b in await self._many(tenant, "b", ids, BatchRecord) if b.status not in TERMINAL]
        return out

    async def active(self) -> list[BatchRecord]:
        out: list[BatchRecord] = []
        for m in await self._r.zrange(ACTIVE, 0, -1):
            batch_id, _, tenant = m.decode().partition(":")
            raw = await self._r.get(_k(tenant, "b", batch_id))
            if raw is None:
                await self._r.zrem(ACTIVE, m)
            else:
                out.append(BatchRecord.loads(raw))
        return out

    async def retire(self, tenant: str, batch_id: str) -> None:
        await self._r.zrem(ACTIVE, f"{batch_id}:{tenant}")

    async def close(self) -> None:
        await self._r.aclose()
