"""cluster.batch's service over both record stores (in process, and a real redis-server): uploads
checked and bounded (file bytes, lines, the tenant's stored bytes), named on disk by owc's id
only, expiry and delete remove disk and record, per-tenant ownership, pagination, a batch's
create/cancel/expiry, and a store that fails answers 503, never a 500."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import orjson
import pytest

from cluster.batch.errors import BatchApiError
from cluster.batch.index import MemoryIndex
from cluster.batch.redis_index import RedisIndex
from cluster.batch.service import BatchService, display_name, page
from cluster.config.batch import BatchConfig
from cluster.process import free_port
from cluster.tenancy.local_redis import LocalRedis

CHAT = "/v1/chat/completions"


def jsonl(n: int, url: str = CHAT, start: int = 0) -> bytes:
    return b"\n".join(orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": url,
                                    "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}})
                      for i in range(start, start + n)) + b"\n"


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_url():
    url = f"redis://127.0.0.1:{free_port()}/0"
    try:
        r = LocalRedis.ensure(url)
    except RuntimeError as e:
        pytest.skip(str(e))
    yield url
    r.stop()


@pytest.fixture(params=["memory", "redis"])
def make(request, tmp_path):
    made: list[BatchService] = []

    def build(**cfg) -> tuple[BatchService, Clock]:
        clock = Clock()
        if request.param == "redis":
            url = request.getfixturevalue("redis_url")  # one test at a time: flushed before each
            asyncio.run(_flush(RedisIndex(url)))
            index = RedisIndex(url)
        else:
            index = MemoryIndex()
        svc = BatchService(BatchConfig(store_dir=str(tmp_path / "store"), **cfg), index=index, clock=clock)
        made.append(svc)
        return svc, clock

    return build


async def _flush(index: RedisIndex) -> None:
    await index._r.flushdb()
    await index.close()


async def upload(svc: BatchService, tenant: str, data: bytes, *, name="in.jsonl", purpose="batch", expires=None):
    up = await svc.begin_upload(tenant)
    for i in range(0, len(data), 7):
        up.write(data[i:i + 7])
    return await svc.finish_upload(tenant, up, filename=name, purpose=purpose, expires_after_s=expires)


def run(coro):
    return asyncio.run(coro)


def test_upload_retrieve_list_content_delete(make):
    svc, clock = make()

    async def go():
        f = await upload(svc, "a", jsonl(3), name="../../etc/passwd")
        assert (f.bytes, f.lines, f.filename, f.purpose) == (len(jsonl(3)), 3, "passwd", "batch")
        assert f.expires_at == int(clock.now) + 30 * 86400
        on_disk = sorted(os.listdir(svc.contents.root / "files"))
        assert on_disk == [f.id] and not os.listdir(svc.contents.root / "tmp")
        assert (await svc.content("a", f.id)).read_bytes() == jsonl(3)
        assert (await svc.file("a", f.id)).openai()["id"] == f.id
        assert await svc.index.tenant_bytes("a") == f.bytes
        # another tenant: not found anywhere, its list empty
        for call in (svc.file("b", f.id), svc.content("b", f.id), svc.delete_file("b", f.id)):
            with pytest.raises(BatchApiError) as e:
                await call
            assert e.value.status == 404
        assert (await svc.files("b", purpose=None, after=None, limit=10, ascending=False))["data"] == []
        assert (await svc.delete_file("a", f.id))["deleted"] is True
        assert os.listdir(svc.contents.root / "files") == [] and await svc.index.tenant_bytes("a") == 0
        with pytest.raises(BatchApiError):
            await svc.file("a", f.id)
        await svc.close()

    run(go())


def test_bounds(make):
    size = len(jsonl(4))
    svc, _ = make(max_file_bytes=2048, max_lines=4, max_tenant_bytes=3 * size + size // 2)  # 3 files fit

    async def go():
        with pytest.raises(BatchApiError) as e:
            await upload(svc, "a", jsonl(5))
        assert e.value.status == 400 and "more than 4 request lines" in e.value.message
        with pytest.raises(BatchApiError) as e:
            await upload(svc, "a", jsonl(40))
        assert e.value.status == 413
        with pytest.raises(BatchApiError) as e:
            await upload(svc, "a", jsonl(2), purpose="fine-tune")
        assert e.value.status == 400 and e.value.param == "purpose"
        f1 = await upload(svc, "a", jsonl(4))
        f2 = await upload(svc, "a", jsonl(4))
        await upload(svc, "a", jsonl(4))
        with pytest.raises(BatchApiError) as e:
            await upload(svc, "a", jsonl(4))
        assert e.value.status == 400 and e.value.code == "storage_limit_exceeded"
        await upload(svc, "b", jsonl(4))  # another tenant's bound is its own
        await svc.delete_file("a", f1.id)
        await svc.delete_file("a", f2.id)
        await upload(svc, "a", jsonl(4))
        # every refusal left nothing on disk: only the recorded files
        names = set(os.listdir(svc.contents.root / "files"))
        recorded = {f["id"] for t in "ab" for f in (await svc.files(t, purpose=None, after=None, limit=100,
                                                                         ascending=False))["data"]}
        assert names == recorded and len(names) == 3 and not os.listdir(svc.contents.root / "tmp")
        await svc.close()

    run(go())


def test_expiry_removes_disk_and_record(make):
    svc, clock = make()

    async def go():
        short = await upload(svc, "a", jsonl(1), expires=3600)
        long = await upload(svc, "a", jsonl(1))
        clock.now += 3600
        with pytest.raises(BatchApiError):  # expired on read
            await svc.file("a", short.id)
        assert os.listdir(svc.contents.root / "files") == [long.id]
        clock.now += 30 * 86400
        assert (await svc.sweep())[0] == 1
        assert os.listdir(svc.contents.root / "files") == [] and await svc.index.tenant_bytes("a") == 0
        await svc.close()

    run(go())


def test_batches(make):
    svc, clock = make()

    async def go():
        f = await upload(svc, "a", jsonl(3))
        made = []
        for i in range(3):
            clock.now += 1
            made.append(await svc.create_batch("a", {"input_file_id": f.id, "endpoint": CHAT,
                                                     "completion_window": "24h", "metadata": {"i": str(i)}}))
        b = made[0].openai()
        assert (b["status"], b["request_counts"], b["expires_at"] - b["created_at"]) == \
            ("validating", {"total": 3, "completed": 0, "failed": 0}, 86400)
        first = await svc.batches("a", after=None, limit=2)
        assert [x["id"] for x in first["data"]] == [made[2].id, made[1].id] and first["has_more"]
        rest = await svc.batches("a", after=first["last_id"], limit=2)
        assert [x["id"] for x in rest["data"]] == [made[0].id] and not rest["has_more"]
        with pytest.raises(BatchApiError) as e:  # the endpoint differs from the lines' url
            await svc.create_batch("a", {"input_file_id": f.id, "endpoint": "/v1/completions",
                                         "completion_window": "24h"})
        assert e.value.status == 400 and "line 1" in e.value.message
        for tenant, bid in (("b", made[0].id), ("a", "batch_nope")):
            with pytest.raises(BatchApiError) as e:
                await svc.batch(tenant, bid)
            assert e.value.status == 404
            with pytest.raises(BatchApiError) as e:
                await svc.cancel(tenant, bid)
            assert e.value.status == 404
        with pytest.raises(BatchApiError) as e:  # another tenant's input file
            await svc.create_batch("b", {"input_file_id": f.id, "endpoint": CHAT, "completion_window": "24h"})
        assert (e.value.status, e.value.param) == (404, "input_file_id")
        c = await svc.cancel("a", made[1].id)
        assert c.status == "cancelled" and c.cancelling_at == c.cancelled_at == int(clock.now)
        assert (await svc.batch("a", made[1].id)).status == "cancelled"
        clock.now += 86400
        assert (await svc.sweep())[1] == 2  # the two validating ones expired; the cancelled one stays
        assert [(await svc.batch("a", m.id)).status for m in made] == ["expired", "cancelled", "expired"]
        await svc.close()

    run(go())


def test_a_store_that_fails_is_a_503():
    svc = BatchService(BatchConfig(store_dir="/nonexistent-never-written", store_timeout_s=0.2),
                       index=RedisIndex(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2))

    async def go():
        for call in (svc.files("a", purpose=None, after=None, limit=1, ascending=False), svc.batch("a", "batch_" + "x" * 24),
                     svc.begin_upload("a")):
            with pytest.raises(BatchApiError) as e:
                await call
            assert e.value.status == 503 and e.value.retry_after_s == 1
        for call in (svc.file("a", "../x"), svc.batch("a", "batch_}:b:x"), svc.cancel("a", "nope")):
            with pytest.raises(BatchApiError) as e:  # not an id owc mints: 404 without asking the store
                await call
            assert e.value.status == 404
        await svc.close()

    run(go())


@pytest.mark.parametrize("name,shown", [
    ("in.jsonl", "in.jsonl"), ("../../etc/passwd", "passwd"), ("C:\\x\\y.jsonl", "y.jsonl"), ("", "upload.jsonl"),
    (None, "upload.jsonl"), ("a\x00b\nc", "abc"), ("x" * 300, "x" * 255),
])
def test_display_name(name, shown):
    assert display_name(name) == shown


def test_page():
    class R:
        def __init__(self, i):
            self.id = i

    rs = [R(i) for i in "abcde"]
    assert [r.id for r in page(rs, after=None, limit=2)[0]] == ["a", "b"] and page(rs, after=None, limit=2)[1]
    assert [r.id for r in page(rs, after="c", limit=5)[0]] == ["d", "e"] and not page(rs, after="c", limit=5)[1]
    assert page(rs, after="zz", limit=5) == ([], False)


def test_what_a_crash_can_leave_behind_is_cleaned_up(make):
    """A crash mid-upload leaves a part file (swept after an hour); one between recording a file and
    moving its content in leaves a record without content (404, then swept at expiry) — never a
    content that no record points to."""
    svc, clock = make()

    async def go():
        f = await upload(svc, "a", jsonl(1), expires=3600)
        svc.contents.path(f.id).unlink()  # as if the process died before the rename
        with pytest.raises(BatchApiError) as e:
            await svc.content("a", f.id)
        assert e.value.status == 404
        stale, fresh = svc.contents.part("file-" + "s" * 24), svc.contents.part("file-" + "f" * 24)
        stale.write_bytes(b"half an upload")
        fresh.write_bytes(b"arriving")
        clock.now += 3600
        os.utime(stale, (clock.now - 3601, clock.now - 3601))
        os.utime(fresh, (clock.now - 10, clock.now - 10))
        assert (await svc.sweep())[0] == 1
        assert await svc.index.tenant_bytes("a") == 0 and (await svc.files("a", purpose=None, after=None, limit=9,
                                                                            ascending=False))["data"] == []
        assert sorted(os.listdir(svc.contents.root / "tmp")) == [fresh.name]
        await svc.close()

    run(go())



def test_records_written_by_a_newer_version_are_read_by_an_older_one():
    """A rolling upgrade: a field a later version adds (as `usage` was) is skipped on read, not fatal."""
    from cluster.batch.records import BatchRecord, FileRecord

    f = FileRecord(id="file-1", tenant="t", bytes=3, created=1.5, expires_at=2, filename="x.jsonl", purpose="batch")
    b = BatchRecord(id="batch_1", tenant="t", endpoint="/v1/completions", input_file_id="file-1",
                    completion_window="24h", status="validating", created=1.5, expires_at=2)
    # unset, the fields added later are not written: the version before them reads the record as ever
    assert not {"model", "usage"} & (set(orjson.loads(f.dumps())) | set(orjson.loads(b.dumps())))
    assert orjson.loads(dataclasses.replace(b, model="m").dumps())["model"] == "m"
    for record in (f, b):
        newer = {**orjson.loads(record.dumps()), "added_later": {"x": 1}}
        assert type(record).loads(orjson.dumps(newer)) == record
        assert type(record).loads(record.dumps()) == record
