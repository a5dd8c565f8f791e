"""Where file and batch records live, behind one interface: in process (MemoryIndex: one gateway
process, tests, no store configured) or in Redis (cluster.batch.redis_index: every gateway
process sees the same records). Records are kept per tenant: a lookup names the tenant, so
another tenant's id is simply not found."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from cluster.batch.records import BatchRecord, FileRecord
from cluster.batch.states import TERMINAL


class BatchIndex(Protocol):
    async def add_file(self, rec: FileRecord, *, max_tenant_bytes: int) -> bool:
        """Record ``rec`` unless the tenant's stored bytes would pass ``max_tenant_bytes`` (False)."""

    async def file(self, tenant: str, file_id: str) -> FileRecord | None: ...

    async def files(self, tenant: str) -> list[FileRecord]:
        """The tenant's files, newest first."""

    async def remove_file(self, tenant: str, file_id: str) -> FileRecord | None:
        """Forget the file (its bytes no longer count); the record, or None when there was none."""

    async def due_files(self, now: float) -> list[FileRecord]:
        """Every tenant's files whose expires_at has passed."""

    async def tenant_bytes(self, tenant: str) -> int: ...

    async def add_batch(self, rec: BatchRecord) -> None: ...

    async def batch(self, tenant: str, batch_id: str) -> BatchRecord | None: ...

    async def batches(self, tenant: str) -> list[BatchRecord]:
        """The tenant's batches, newest first."""

    async def update_batch(self, tenant: str, batch_id: str,
                           change: Callable[[BatchRecord], BatchRecord]) -> BatchRecord | None:
        """Apply ``change`` to the record atomically (against other processes' updates)."""

    async def due_batches(self, now: float) -> list[BatchRecord]:
        """Unfinished batches whose expires_at has passed."""

    async def active(self) -> list[BatchRecord]:
        """Every tenant's batches a runner has work on: from creation until ``retire``."""

    async def retire(self, tenant: str, batch_id: str) -> None:
        """The batch's output files are recorded: no runner needs it any more."""

    async def close(self) -> None: ...


def newest_first(records):
    return sorted(records, key=lambda r: (r.created, r.id), reverse=True)


class MemoryIndex:
    def __init__(self) -> None:
        self._files: dict[str, dict[str, FileRecord]] = {}
        self._batches: dict[str, dict[str, BatchRecord]] = {}
        self._active: dict[str, str] = {}  # batch id -> tenant, in creation order

    async def add_file(self, rec: FileRecord, *, max_tenant_bytes: int) -> bool:
        if await self.tenant_bytes(rec.tenant) + rec.bytes > max_tenant_bytes:
            return False
        self._files.setdefault(rec.tenant, {})[rec.id] = rec
        return True

    async def file(self, tenant: str, file_id: str) -> FileRecord | None:
        return self._files.get(tenant, {}).get(file_id)

    async def files(self, tenant: str) -> list[FileRecord]:
        return newest_first(self._files.get(tenant, {}).values())

    async def remove_file(self, tenant: str, file_id: str) -> FileRecord | None:
        return self._files.get(tenant, {}).pop(file_id, None)

    async def due_files(self, now: float) -> list[FileRecord]:
        return [f for fs in self._files.values() for f in fs.values() if f.expires_at <= now]

    async def tenant_bytes(self, tenant: str) -> int:
        return sum(f.bytes for f in self._files.get(tenant, {}).values())

    async def add_batch(self, rec: BatchRecord) -> None:
        self._batches.setdefault(rec.tenant, {})[rec.id] = rec
        self._active[rec.id] = rec.tenant

    async def batch(self, tenant: str, batch_id: str) -> BatchRecord | None:
        return self._batches.get(tenant, {}).get(batch_id)

    async def batches(self, tenant: str) -> list[BatchRecord]:
        return newest_first(self._batches.get(tenant, {}).values())

    async def update_batch(self, tenant: str, batch_id: str,
                           change: Callable[[BatchRecord], BatchRecord]) -> BatchRecord | None:
        old = self._batches.get(tenant, {}).get(batch_id)
        if old is None:
            return None
        new = self._batches[tenant][batch_id] = change(old)
        return new

    async def due_batches(self, now: float) -> list[BatchRecord]:
        return [b for bs in self._batches.values() for b in bs.values()
                if b.status not in TERMINAL and b.expires_at <= now]

    async def active(self) -> list[BatchRecord]:
        return [self._batches[t][b] for b, t in list(self._active.items()) if b in self._batches.get(t, {})]

    async def retire(self, tenant: str, batch_id: str) -> None:
        self._active.pop(batch_id, None)

    async def close(self) -> None:
        return None
