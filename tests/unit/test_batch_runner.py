"""The batch runner (cluster.batch.runner) over both stores (in process; a real redis-server with
two runners sharing it as two gateway processes do): a batch runs validating -> in_progress ->
finalizing -> completed with OpenAI's output and error lines; two runners run every line once;
a runner that dies mid-batch (its leases not renewed) has its lines taken by the other once the
leases expire, and a late answer of the dead one is not written twice; expiry and cancel close
the batch with partial output."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from cluster.batch import states
from cluster.batch.errors import BatchApiError
from cluster.batch.index import MemoryIndex
from cluster.batch.ledger import MemoryLedger
from cluster.batch.redis_index import RedisIndex
from cluster.batch.redis_ledger import RedisLedger
from cluster.batch.runner import BatchRunner, LineAnswer, LineCall
from cluster.batch.service import BatchService
from cluster.config.batch import BatchConfig
from tests.unit.test_batch_store import CHAT, Clock, jsonl, redis_url, upload  # noqa: F401 - the fixture

TENANT = "acme"


class Engine:
    """The gateway's side, faked: answers each line (400 for custom ids in ``refuse``), counts
    calls per custom_id; ``hold`` keeps lines waiting until released."""

    def __init__(self, refuse=(), hold: asyncio.Event | None = None):
        self.calls: dict[str, int] = {}
        self.refuse = set(refuse)
        self.hold = hold

    async def __call__(self, call: LineCall) -> LineAnswer:
        self.calls[call.custom_id] = self.calls.get(call.custom_id, 0) + 1
        call.sent = True
        if self.hold is not None:
            await self.hold.wait()
        await asyncio.sleep(0)
        if call.custom_id in self.refuse:
            return LineAnswer(400, {"error": {"message": "bad", "type": "invalid_request_error", "param": None,
                                              "code": None}}, "req-x")
        return LineAnswer(200, {"object": "chat.completion", "echo": call.custom_id, "tenant": call.tenant}, "req-y")


def build(kind: str, tmp_path, clock: Clock, url: str | None, **cfg):
    cfg = {"store_dir": str(tmp_path / "store"), "lease_ttl_s": 10, **cfg}
    if kind == "redis":
        index, ledger = RedisIndex(url), RedisLedger(url)
    else:
        index, ledger = MemoryIndex(), MemoryLedger()
    return BatchService(BatchConfig(**cfg), index=index, clock=clock), ledger


@pytest.fixture(params=["memory", "redis"])
def kind(request):
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")

        async def flush():
            idx = RedisIndex(url)
            await idx._r.flushdb()
            await idx.close()

        asyncio.run(flush())
        return "redis", url
    return "memory", None


async def run_until(runners, svc, batch_id, statuses, rounds=200):
    for _ in range(rounds):
        for r in runners:
            await r.tick()
        await asyncio.sleep(0.005)
        b = await svc.batch(TENANT, batch_id)
        if b.status in statuses and b.id not in {x.id for x in await svc.index.active()}:
            return b
    raise AssertionError(f"batch {batch_id} stayed {b.status}")


async def lines_of(svc, file_id):
    if file_id is None:
        return []
    return [orjson.loads(x) for x in (await svc.content(TENANT, file_id)).read_bytes().splitlines()]


async def new_batch(svc, n):
    f = await upload(svc, TENANT, jsonl(n))
    return await svc.create_batch(TENANT, {"input_file_id": f.id, "endpoint": CHAT, "completion_window": "24h"})


def test_batch_completes_with_output_and_error_files(kind, tmp_path):
    async def go():
        clock = Clock()
        svc, ledger = build(kind[0], tmp_path, clock, kind[1])
        eng = Engine(refuse={"r3"})
        runner = BatchRunner(svc, ledger, eng, clock=clock)
        b = await new_batch(svc, 6)
        b = await run_until([runner], svc, b.id, {states.COMPLETED})
        assert b.openai()["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
        assert b.in_progress_at and b.finalizing_at and b.completed_at
        out, err = await lines_of(svc, b.output_file_id), await lines_of(svc, b.error_file_id)
        assert [x["custom_id"] for x in out] == ["r0", "r1", "r2", "r4", "r5"]  # input order
        assert [x["custom_id"] for x in err] == ["r3"]
        assert out[0]["response"] == {"status_code": 200, "request_id": "req-y",
                                      "body": {"object": "chat.completion", "echo": "r0", "tenant": TENANT}}
        assert out[0]["error"] is None and out[0]["id"].startswith("batch_req_")
        assert err[0]["response"]["status_code"] == 400 and err[0]["response"]["body"]["error"]["message"] == "bad"
        f = await svc.file(TENANT, b.output_file_id)
        assert f.purpose == "batch_output" and f.openai()["bytes"] == f.bytes > 0
        assert not (tmp_path / "store" / "work" / b.id).exists()  # per-line results gone once assembled
        await svc.close()
        await ledger.close()

    asyncio.run(go())


def test_a_closed_batch_shows_the_usage_of_its_lines(kind, tmp_path):
    """OpenAI's Batch ``usage``: the answered lines' tokens summed (Chat Completions' and Responses'
    shapes); a refused line counts nothing; null while the batch runs."""
    chat = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
            "prompt_tokens_details": {"cached_tokens": 8}, "completion_tokens_details": {"reasoning_tokens": 1}}
    responses = {"input_tokens": 7, "output_tokens": 5, "total_tokens": 12,
                 "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 3}}

    class Counted(Engine):
        async def __call__(self, call: LineCall) -> LineAnswer:
            ans = await super().__call__(call)
            usage = {"r0": chat, "r1": chat, "r2": responses, "r3": None}.get(call.custom_id)
            return ans if ans.status >= 400 else LineAnswer(ans.status, {**ans.body, "usage": usage}, ans.request_id)

    async def go():
        clock = Clock()
        svc, ledger = build(kind[0], tmp_path, clock, kind[1])
        b = await new_batch(svc, 5)
        assert "usage" not in b.openai()  # only once the batch closed
        b = await run_until([BatchRunner(svc, ledger, Counted(refuse={"r4"}), clock=clock)], svc, b.id,
                            {states.COMPLETED})
        assert b.openai()["usage"] == {"input_tokens": 27, "input_tokens_details": {"cached_tokens": 16},
                                       "output_tokens": 13, "output_tokens_details": {"reasoning_tokens": 5},
                                       "total_tokens": 40}
        await svc.close()
        await ledger.close()

    asyncio.run(go())


def test_two_runners_run_each_line_once(kind, tmp_path):
    if kind[0] == "memory":
        pytest.skip("two processes share lines through Redis only")

    async def go():
        clock = Clock()
        (a_svc, a_led), (b_svc, b_led) = (build("redis", tmp_path, clock, kind[1], lines_in_flight=4)
                                          for _ in range(2))
        eng = Engine()
        a, b = BatchRunner(a_svc, a_led, eng, clock=clock), BatchRunner(b_svc, b_led, eng, clock=clock)
        batch = await new_batch(a_svc, 40)
        done = await run_until([a, b], a_svc, batch.id, {states.COMPLETED})
        assert eng.calls == {f"r{i}": 1 for i in range(40)}
        out = await lines_of(a_svc, done.output_file_id)
        assert sorted(x["custom_id"] for x in out) == sorted(f"r{i}" for i in range(40)) and done.completed == 40
        for s, led in ((a_svc, a_led), (b_svc, b_led)):
            await s.close()
            await led.close()

    asyncio.run(go())


def test_a_dead_runners_lines_are_taken_over_once(kind, tmp_path):
    """Runner A takes lines and dies (its tasks never answer, its leases are not renewed); B runs
    them once the leases expire; A's late answer to one is refused by the ledger: one output line
    per custom_id."""
    async def go():
        clock = Clock()
        a_svc, a_led = build(kind[0], tmp_path, clock, kind[1], lines_in_flight=3)
        b_svc, b_led = (a_svc, a_led) if kind[0] == "memory" else build("redis", tmp_path, clock, kind[1])
        stuck = Engine(hold=asyncio.Event())
        a = BatchRunner(a_svc, a_led, stuck, clock=clock, owner="aaaa")
        batch = await new_batch(a_svc, 8)
        await a.tick()
        await asyncio.sleep(0.01)
        assert sorted(stuck.calls) == ["r0", "r1", "r2"]  # A holds three lines, then "dies"
        eng = Engine()
        b = BatchRunner(b_svc, b_led, eng, clock=clock, owner="bbbb")
        for _ in range(20):  # before the leases expire B runs the other five only
            await b.tick()
            await asyncio.sleep(0.005)
        assert sorted(eng.calls) == [f"r{i}" for i in range(3, 8)]
        clock.now += 11  # A's leases (10 s) lapse
        done = await run_until([b], b_svc, batch.id, {states.COMPLETED})
        assert eng.calls == {f"r{i}": 1 for i in range(8)}
        stuck.hold.set()  # A answers late: the ledger has the line done already
        await asyncio.sleep(0.02)
        out = await lines_of(b_svc, done.output_file_id)
        assert sorted(x["custom_id"] for x in out) == [f"r{i}" for i in range(8)]
        assert done.openai()["request_counts"] == {"total": 8, "completed": 8, "failed": 0}
        await a.stop()

    asyncio.run(go())


def test_a_stopped_runner_gives_its_lines_back_at_once(kind, tmp_path):
    async def go():
        clock = Clock()
        a_svc, a_led = build(kind[0], tmp_path, clock, kind[1], lines_in_flight=3)
        b_svc, b_led = (a_svc, a_led) if kind[0] == "memory" else build("redis", tmp_path, clock, kind[1])
        stuck = Engine(hold=asyncio.Event())
        a = BatchRunner(a_svc, a_led, stuck, clock=clock, owner="aaaa")
        batch = await new_batch(a_svc, 5)
        await a.tick()
        await asyncio.sleep(0.01)
        await a.stop()  # a graceful stop (SIGTERM): its three lines back, no lease to wait for
        eng = Engine()
        done = await run_until([BatchRunner(b_svc, b_led, eng, clock=clock, owner="bbbb")], b_svc, batch.id,
                               {states.COMPLETED})
        assert eng.calls == {f"r{i}": 1 for i in range(5)} and done.completed == 5

    asyncio.run(go())


def test_expiry_closes_with_partial_output(kind, tmp_path):
    async def go():
        clock = Clock()
        svc, ledger = build(kind[0], tmp_path, clock, kind[1], lines_in_flight=2)
        hold = asyncio.Event()
        eng = Engine(hold=hold)
        runner = BatchRunner(svc, ledger, eng, clock=clock)
        batch = await new_batch(svc, 5)
        await runner.tick()
        await asyncio.sleep(0.01)
        hold.set()  # the two lines in flight answer
        await asyncio.sleep(0.01)
        clock.now = batch.expires_at + 1  # the 24 h window closes
        done = await run_until([runner], svc, batch.id, {states.EXPIRED})
        out, err = await lines_of(svc, done.output_file_id), await lines_of(svc, done.error_file_id)
        assert [x["custom_id"] for x in out] == ["r0", "r1"]
        assert [(x["custom_id"], x["error"]["code"], x["response"]) for x in err] == \
            [(f"r{i}", "batch_expired", None) for i in range(2, 5)]
        assert done.expired_at and done.completed == 2

    asyncio.run(go())


def test_cancel_in_progress_finishes_in_flight_lines(kind, tmp_path):
    async def go():
        clock = Clock()
        svc, ledger = build(kind[0], tmp_path, clock, kind[1], lines_in_flight=2)
        hold = asyncio.Event()
        eng = Engine(hold=hold)
        runner = BatchRunner(svc, ledger, eng, clock=clock)
        batch = await new_batch(svc, 6)
        await runner.tick()
        await asyncio.sleep(0.01)
        b = await svc.cancel(TENANT, batch.id)
        assert b.status == states.CANCELLING
        await runner.tick()
        assert (await svc.batch(TENANT, batch.id)).status == states.CANCELLING  # two lines still in flight
        hold.set()
        done = await run_until([runner], svc, batch.id, {states.CANCELLED})
        assert sorted(eng.calls) == ["r0", "r1"]  # no line taken after the cancel
        assert [x["custom_id"] for x in await lines_of(svc, done.output_file_id)] == ["r0", "r1"]
        # the lines never run: in the error file, named, to send again
        err = await lines_of(svc, done.error_file_id)
        assert [(x["custom_id"], x["error"]["code"], x["response"]) for x in err] == \
            [(f"r{i}", "batch_cancelled", None) for i in range(2, 6)]
        assert done.cancelled_at and (done.completed, done.failed) == (2, 0)

    asyncio.run(go())


def test_an_input_file_deleted_while_its_batch_runs_takes_no_line_away(kind, tmp_path):
    """The batch links its input's content when it starts (as OpenAI, a batch outlives a delete of
    its input file): the file is gone from the tenant's files at once, the batch still runs every
    line, and the link goes with the batch's work directory when it closes."""
    async def go():
        clock = Clock()
        svc, ledger = build(kind[0], tmp_path, clock, kind[1], lines_in_flight=2)
        hold = asyncio.Event()
        eng = Engine(hold=hold)
        runner = BatchRunner(svc, ledger, eng, clock=clock)
        batch = await new_batch(svc, 6)
        await runner.tick()
        await asyncio.sleep(0.01)
        assert sorted(eng.calls) == ["r0", "r1"]
        await svc.delete_file(TENANT, batch.input_file_id)
        assert not svc.contents.path(batch.input_file_id).exists()
        with pytest.raises(BatchApiError):
            await svc.file(TENANT, batch.input_file_id)
        hold.set()
        done = await run_until([runner], svc, batch.id, {states.COMPLETED})
        assert [x["custom_id"] for x in await lines_of(svc, done.output_file_id)] == [f"r{i}" for i in range(6)]
        assert done.error_file_id is None
        assert not (tmp_path / "store" / "work" / batch.id).exists()  # its link to the input gone too
        await svc.close()
        await ledger.close()

    asyncio.run(go())


def test_a_batch_whose_input_is_deleted_before_it_starts_fails(kind, tmp_path):
    async def go():
        clock = Clock()
        svc, ledger = build(kind[0], tmp_path, clock, kind[1])
        batch = await new_batch(svc, 2)
        await svc.delete_file(TENANT, batch.input_file_id)
        done = await run_until([BatchRunner(svc, ledger, Engine(), clock=clock)], svc, batch.id, {states.FAILED})
        assert [e["code"] for e in done.openai()["errors"]["data"]] == ["invalid_file"]
        await svc.close()
        await ledger.close()

    asyncio.run(go())


@pytest.mark.parametrize("expires_after", [None, 7200])
def test_output_files_expire_after_output_expires_after(kind, tmp_path, expires_after):
    """output_expires_after (create batch) sets the output and error files' expires_at (their
    created_at + seconds; without it batch.file_expiry_s), and the sweep deletes them then."""
    async def go():
        clock = Clock()
        svc, ledger = build(kind[0], tmp_path, clock, kind[1], file_expiry_s=86400)
        f = await upload(svc, TENANT, jsonl(3))
        body = {"input_file_id": f.id, "endpoint": CHAT, "completion_window": "24h"}
        if expires_after:
            body["output_expires_after"] = {"anchor": "created_at", "seconds": expires_after}
        batch = await svc.create_batch(TENANT, body)
        assert (await svc.batch(TENANT, batch.id)).output_expires_s == expires_after  # stored
        clock.now += 100  # the files are made later than the batch: anchored at their own creation
        done = await run_until([BatchRunner(svc, ledger, Engine(refuse={"r1"}), clock=clock)], svc, batch.id,
                               {states.COMPLETED})
        lifetime = expires_after or 86400
        made = [await svc.file(TENANT, done.output_file_id), await svc.file(TENANT, done.error_file_id)]
        for rec in made:
            assert rec.created_at == int(clock.now) and rec.openai()["expires_at"] == rec.created_at + lifetime
        clock.now += lifetime - 1
        await svc.sweep()
        assert [await svc.file(TENANT, r.id) for r in made] == made  # not yet
        clock.now += 1
        assert (await svc.sweep())[0] >= 2
        for rec in made:
            assert not svc.contents.path(rec.id).exists()  # gone from disk and store
            with pytest.raises(BatchApiError):
                await svc.file(TENANT, rec.id)
            assert rec.id not in [x.id for x in await svc.index.files(TENANT)]
        await svc.close()
        await ledger.close()

    asyncio.run(go())


@pytest.mark.parametrize(("cfg", "starts"), [
    ({}, True),  # owc serve's defaults: two gateway processes, no store
    ({"gateway": {"fair_sharing": {"enabled": False}}}, True),  # fair sharing off: the batches still need one
    ({"gateway": {"replicas": 1}}, False),  # one process: its records in process
    ({"batch": {"enabled": False}}, False),
    ({"batch": {"store_url": "redis://127.0.0.1:7/0"}}, False),
    ({"gateway": {"store": {"url": "redis://10.0.0.5:6379/0"}}}, False),  # the tenancy store holds them
])
def test_owc_serve_starts_a_store_for_the_batches_of_its_gateway_processes(cfg, starts):
    from cluster.config.loader import parse_config
    from cluster.local_stores import needs_batch_store

    assert needs_batch_store(parse_config({"models": {"m": {"source": "external"}}, **cfg})) is starts


def test_an_input_link_the_filesystem_refuses_falls_back_to_the_file(tmp_path, monkeypatch):
    """No hard links (EPERM, EXDEV): the batch starts anyway, reading the file itself; a source
    gone is FileNotFoundError (the batch fails), whatever the filesystem says."""
    from cluster.batch.output import Results

    results, batch_id, src = Results(tmp_path), "batch_" + "a" * 24, tmp_path / "in"
    src.write_bytes(b"x")
    monkeypatch.setattr("os.link", lambda *a: (_ for _ in ()).throw(OSError(1, "EPERM")))
    results.keep_input(batch_id, src)
    assert not results.input_of(batch_id).exists()
    src.unlink()
    with pytest.raises(FileNotFoundError):
        results.keep_input(batch_id, src)
