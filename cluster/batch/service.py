"""The Files and Batches operations as the gateway's handlers call them, for one tenant at a time:
upload (checked, bounded, stored under owc's id), list, retrieve, content, delete; create a
batch from a checked input file, retrieve, list, cancel; and the sweep that deletes expired
files and expires overdue batches. No HTTP here: refusals are BatchApiErrors."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cluster.batch import states
from cluster.batch.contents import Contents, Upload
from cluster.batch.errors import BatchApiError, invalid, no_such_batch, no_such_file, store_unavailable
from cluster.batch.ids import is_batch_id, is_file_id, new_batch_id, new_file_id
from cluster.batch.index import BatchIndex, MemoryIndex
from cluster.batch.lines import check_create, check_file_for_batch, check_input
from cluster.batch.records import BatchRecord, FileRecord
from cluster.config.batch import BatchConfig

log = logging.getLogger(__name__)
WINDOW_S = {"24h": 86400}
PART_TTL_S = 3600  # an upload still arriving after this long is gone (gateway.limits.body_timeout_s bounds it)
PURPOSES = ("batch",)  # what owc stores; OpenAI's other purposes are refused
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def display_name(filename: str | None) -> str:
    """The client's filename as shown back: its last path part, printable, at most 255 characters."""
    name = _UNPRINTABLE.sub("", (filename or "").replace("\\", "/").rsplit("/", 1)[-1])[:255]
    return name or "upload.jsonl"


def page(records: Sequence, *, after: str | None, limit: int) -> tuple[list, bool]:
    """Records after the one whose id is ``after`` (none when it is not among them), at most ``limit``."""
    if after:
        at = next((i for i, r in enumerate(records) if r.id == after), None)
        records = [] if at is None else records[at + 1:]
    return list(records[:limit]), len(records) > limit


def listing(items: list, has_more: bool) -> dict:
    data = [r.openai() for r in items]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


class BatchService:
    def __init__(self, cfg: BatchConfig, *, index: BatchIndex | None = None, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.index: BatchIndex = index if index is not None else MemoryIndex()
        self.contents = Contents(cfg.store_dir)
        self._clock = clock

    async def _store(self, call):
        """One index call; the store failing is a 503 with Retry-After, never a 500."""
        try:
            return await call
        except BatchApiError:
            raise
        except Exception as e:  # noqa: BLE001 - Redis down, slow or answering nonsense
            log.warning("batch store call failed: %r", e)
            raise store_unavailable() from e

    # -- files --------------------------------------------------------------------------------
    async def begin_upload(self, tenant: str) -> Upload:
        if await self._store(self.index.tenant_bytes(tenant)) >= self.cfg.max_tenant_bytes:
            raise self._over_storage()
        return Upload(self.contents, new_file_id(), max_bytes=self.cfg.max_file_bytes)

    def _over_storage(self) -> BatchApiError:
        return BatchApiError(400, f"the tenant's stored files would exceed {self.cfg.max_tenant_bytes} bytes; "
                             "delete files or wait for them to expire", code="storage_limit_exceeded", param="file")

    async def finish_upload(self, tenant: str, upload: Upload, *, filename: str | None, purpose: str | None,
                            expires_after_s: int | None) -> FileRecord:
        """The checked upload recorded for ``tenant`` (the part file discarded on any refusal)."""
        try:
            upload.close()
            if purpose is None:
                raise invalid("missing required parameter: 'purpose'", param="purpose", code="missing_required_parameter")
            if purpose not in PURPOSES:
                raise invalid(f"purpose {purpose!r} is not supported: owc stores files for batches "
                              "(purpose \"batch\")", param="purpose", code="unsupported_value")
            if not upload.started:
                raise invalid("the file is empty or missing", param="file", code="invalid_batch_input")
            summary = await asyncio.to_thread(
                lambda: check_input(self.contents.lines(self.contents.part(upload.id)), max_lines=self.cfg.max_lines))
            now = self._clock()
            rec = FileRecord(upload.id, tenant, upload.size, now, int(now) + (expires_after_s or self.cfg.file_expiry_s),
                             display_name(filename), purpose, summary.lines, dict(summary.urls), summary.model)
            # Recorded before its content is in place (and deleted after its content is gone): a
            # crash between the two leaves a record without content (404, swept at expiry), never
            # a content no record points to.
            if not await self._store(self.index.add_file(rec, max_tenant_bytes=self.cfg.max_tenant_bytes)):
                raise self._over_storage()
        except BaseException:
            upload.discard()
            raise
        try:
            self.contents.commit(upload.id)
        except BaseException:
            upload.discard()
            await self._store(self.index.remove_file(tenant, rec.id))
            raise
        return rec

    async def file(self, tenant: str, file_id: str) -> FileRecord:
        if not is_file_id(file_id):  # not one owc minted: no store call, and nothing of it reaches a key
            raise no_such_file(file_id)
        rec = await self._store(self.index.file(tenant, file_id))
        if rec is None:
            raise no_such_file(file_id)
        if rec.expires_at <= self._clock():
            await self._forget(rec)
            raise no_such_file(file_id)
        return rec

    async def files(self, tenant: str, *, purpose: str | None, after: str | None, limit: int,
                    ascending: bool) -> dict:
        now = self._clock()
        recs = [f for f in await self._store(self.index.files(tenant))
                if f.expires_at > now and (purpose is None or f.purpose == purpose)]
        return listing(*page(recs[::-1] if ascending else recs, after=after, limit=limit))

    async def content(self, tenant: str, file_id: str) -> Path:
        rec = await self.file(tenant, file_id)
        path = self.contents.path(rec.id)
        if not path.exists():
            raise no_such_file(file_id)
        return path

    async def delete_file(self, tenant: str, file_id: str) -> dict:
        if not is_file_id(file_id):
            raise no_such_file(file_id)
        rec = await self._store(self.index.file(tenant, file_id))
        if rec is None:
            raise no_such_file(file_id)
        await self._forget(rec)
        return {"id": rec.id, "object": "file", "deleted": True}

    async def _forget(self, rec: FileRecord) -> None:
        """The content first, then the record (see finish_upload)."""
        self.contents.remove(rec.id)
        await self._store(self.index.remove_file(rec.tenant, rec.id))

    # -- batches ------------------------------------------------------------------------------
    async def create_batch(self, tenant: str, body: object) -> BatchRecord:
        req = check_create(body)
        try:
            f = await self.file(tenant, req.input_file_id)
        except BatchApiError as e:
            e.param = "input_file_id"
            raise
        check_file_for_batch(f.summary, req.endpoint)
        now = self._clock()
        rec = BatchRecord(new_batch_id(), tenant, req.endpoint, f.id, req.completion_window, states.VALIDATING, now,
                          int(now) + WINDOW_S[req.completion_window], total=f.lines, metadata=req.metadata,
                          output_expires_s=req.output_expires_s, model=f.model)
        await self._store(self.index.add_batch(rec))
        return rec

    async def batch(self, tenant: str, batch_id: str) -> BatchRecord:
        if not is_batch_id(batch_id):
            raise no_such_batch(batch_id)
        rec = await self._store(self.index.batch(tenant, batch_id))
        if rec is None:
            raise no_such_batch(batch_id)
        return rec

    async def batches(self, tenant: str, *, after: str | None, limit: int) -> dict:
        return listing(*page(await self._store(self.index.batches(tenant)), after=after, limit=limit))

    async def cancel(self, tenant: str, batch_id: str) -> BatchRecord:
        """A batch in progress becomes cancelling (its runners stop taking lines, finish those in
        flight, and close it cancelled with partial output); one not started yet is cancelled at
        once (as is any batch when no gateway process runs batches: batch.run off)."""
        if not is_batch_id(batch_id):
            raise no_such_batch(batch_id)
        now = self._clock()
        running = self.cfg.run
        rec = await self._store(self.index.update_batch(
            tenant, batch_id, lambda b: states.cancel(b, now, running=running and b.status == states.IN_PROGRESS)))
        if rec is None:
            raise no_such_batch(batch_id)
        return rec

    async def sweep(self) -> tuple[int, int]:
        """Delete expired files (disk and store) and expire overdue batches: (files, batches)."""
        now = self._clock()
        files = await self._store(self.index.due_files(now))
        for f in files:
            await self._forget(f)
        self.contents.drop_parts(older_than=now - PART_TTL_S)  # uploads a crash cut short
        batches = await self._store(self.index.due_batches(now))
        for b in batches:
            await self._store(self.index.update_batch(b.tenant, b.id, lambda r: states.expire(r, now) or r))
        return len(files), len(batches)

    async def close(self) -> None:
        await self.index.close()


def build_service(cfg: BatchConfig, *, store_url: str | None) -> BatchService:
    """The service over Redis at ``store_url`` (shared by every gateway process), or in process."""
    if store_url is None:
        return BatchService(cfg)
    from cluster.batch.redis_index import RedisIndex

    return BatchService(cfg, index=RedisIndex(store_url, timeout_s=cfg.store_timeout_s))
