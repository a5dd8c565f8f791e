"""Issue 29, must-show 3: no batch line is charged twice, whatever point its process dies at. A
line's tokens go to the tenant's daily quota, its batch_daily_tokens and its usage record once
per line (cluster.tenancy: a line reserves once, a hold a rerun reuses; its charge is settled once
per line, marked in the store), by the runner whose done-mark won, or, when that runner died
before charging, by the one closing the batch (the charge kept pending beside the done-mark,
cluster.batch.ledger). Runner A is killed (a BaseException, as a SIGKILL ends everything) at each
step of a line; runner B takes the lines over once A's leases lapse and completes the batch: every
quota counter holds each line's tokens once and the usage record one request per line. Two
processes over a real redis-server (separate tenancy stores and ledgers), and in process."""

from __future__ import annotations

import asyncio

import pytest

from cluster.batch import states
from cluster.batch.ledger import MemoryLedger
from cluster.batch.redis_ledger import RedisLedger
from cluster.batch.runner import BatchRunner, LineAnswer, LineCall
from cluster.config.auth import TenantConfig
from cluster.tenancy.charging import Outcome
from cluster.tenancy.redis_store import RedisStore
from cluster.tenancy.service import Tenancy, batch_key
from tests.unit.test_batch_runner import TENANT, build, new_batch, run_until
from tests.unit.test_batch_store import Clock, redis_url  # noqa: F401 - the fixture

LINES, COST, PROMPT, COMPLETION = 4, 100, 10, 5
TENANTS = {TENANT: TenantConfig(daily_tokens=100_000, batch_daily_tokens=100_000)}


class Killed(BaseException):
    """The process dies here: nothing after this point of the line runs (not even an except)."""


class Gateway:
    """The gateway's side of a line as admission does it (cluster.gateway.admission.tenancy):
    reserve for (batch, line), answer, leave the charge on the call; ``die_in_engine`` kills the
    line after its reservation; ``hold`` keeps answers back."""

    def __init__(self, tenancy: Tenancy, *, die_in_engine=False, hold: asyncio.Event | None = None):
        self.tenancy, self.die, self.hold, self.calls = tenancy, die_in_engine, hold, 0

    async def __call__(self, call: LineCall) -> LineAnswer:
        self.calls += 1
        t = await self.tenancy.admit(call.tenant, "batch:m", cost=COST, estimate=PROMPT, batch=True,
                                     line=(call.batch_id, call.line))
        assert t.decision.admitted
        call.sent = True
        if self.die:
            raise Killed
        if self.hold is not None:
            await self.hold.wait()
        call.charge = self.tenancy.line_charge(t, Outcome(200, PROMPT, COMPLETION))
        return LineAnswer(200, {"object": "chat.completion"}, "req")


class Dying:
    """``inner`` whose method ``name`` kills the caller (raises Killed before the call)."""

    def __init__(self, inner, name: str | None):
        self._inner, self._name = inner, name

    def __getattr__(self, attr):
        if attr == self._name:
            async def killed(*a, **k):
                raise Killed
            return killed
        return getattr(self._inner, attr)


def dying_runner(svc, ledger, tenancy, gateway, clock, point: str) -> BatchRunner:
    """Runner A, killed at ``point`` of each line: write (the result), finish (the done-mark),
    settle (the charge), forget (the pending charge cleared); engine: in the gateway."""
    runner = BatchRunner(svc, Dying(ledger, {"finish": "finish", "forget": "settled"}.get(point)), gateway,
                         clock=clock, owner="aaaa", charges=Dying(tenancy, "settle_line" if point == "settle" else None))
    if point == "write":
        def write(*a, **k):
            raise Killed
        runner.results.write = write
    return runner


class Side:
    """One process: its tenancy (own store client) and ledger."""

    def __init__(self, kind: str, url: str | None, shared: tuple | None):
        if kind == "redis":
            self.tenancy = Tenancy(TENANTS, store=RedisStore(url))
            self.ledger = RedisLedger(url)
        else:  # in process: one tenancy and ledger (a task dies, not the process)
            self.tenancy, self.ledger = shared or (Tenancy(TENANTS), MemoryLedger())


async def counters(t: Tenancy) -> dict[str, int]:
    """Tokens charged today: the tenant's daily quota and its batch quota; usage requests."""
    if t.store is None:
        q = t._local._quota
        return {"daily": sum(v for (k, kind, _), v in q.items() if k == TENANT and kind == "d"),
                "batch": sum(v for (k, kind, _), v in q.items() if k == batch_key(TENANT) and kind == "d")}
    r = t.store._r
    out = {}
    for name, who in (("daily", TENANT), ("batch", batch_key(TENANT))):
        keys = [k for k in await r.keys("owc:t:{" + who + "}:d:*")]
        out[name] = sum([int(await r.get(k)) for k in keys])
    usage = await t.store.usage()
    out["requests"] = sum(row["requests"] for row in usage if row["model"] == "batch:m")
    out["holds"] = sum([await r.hlen(k) for k in await r.keys("owc:t:*:bh:*")])
    return out


async def two_sides(kind: str, tmp_path, clock, url: str | None):
    """The batch service and two gateway processes' sides (A, and B sharing A's stores in
    process), the store emptied first."""
    svc, _ = build(kind, tmp_path, clock, url, lines_in_flight=LINES)
    a = Side(kind, url, None)
    if a.tenancy.store is not None:
        await a.tenancy.store._r.flushdb()
    return svc, a, Side(kind, url, (a.tenancy, a.ledger))


POINTS = ["engine", "write", "finish", "settle", "forget", "none"]


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_line_is_charged_once_whatever_step_its_process_dies_at(kind, point, tmp_path, request):
    url = request.getfixturevalue("redis_url") if kind == "redis" else None

    async def go():
        clock = Clock()
        svc, a, b = await two_sides(kind, tmp_path, clock, url)
        ran_a = Gateway(a.tenancy, die_in_engine=point == "engine")
        runner_a = dying_runner(svc, a.ledger, a.tenancy, ran_a, clock, point)
        batch = await new_batch(svc, LINES)
        await runner_a.tick()  # validating -> in_progress
        await runner_a.tick()  # A takes every line and runs each to its death point
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert ran_a.calls == LINES
        if kind == "redis":
            mid = await counters(a.tenancy)
            assert mid["requests"] <= LINES  # at most one charge per line at any point
        clock.now += 11  # A's leases (10 s) lapse: B takes its lines not done
        ran_b = Gateway(b.tenancy)
        runner_b = BatchRunner(svc, b.ledger, ran_b, clock=clock, owner="bbbb", charges=b.tenancy)
        done = await run_until([runner_b], svc, batch.id, {states.COMPLETED})
        assert done.completed == LINES
        rerun = point in ("engine", "write", "finish")  # not done when A died: run again by B
        assert ran_b.calls == (LINES if rerun else 0)
        got = await counters(b.tenancy)
        charged = LINES * (PROMPT + COMPLETION)
        assert (got["daily"], got["batch"]) == (charged, charged)  # each line's tokens once, reservations back
        if kind == "redis":
            assert got["requests"] == LINES and got["holds"] == 0
            await a.tenancy.close()
            await b.tenancy.close()
            await a.ledger.close()
            await b.ledger.close()
        await svc.close()

    asyncio.run(go())


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_late_answer_of_a_line_charged_already_charges_nothing(kind, tmp_path, request):
    """A is slow, not dead: B reruns its lines and completes the batch; A's answers come after the
    batch has closed (its ledger gone, so A's done-mark 'wins' again): the store's settled mark
    still refuses a second charge, and A's reservations are not left behind."""
    url = request.getfixturevalue("redis_url") if kind == "redis" else None

    async def go():
        clock = Clock()
        svc, a, b = await two_sides(kind, tmp_path, clock, url)
        late = asyncio.Event()
        runner_a = BatchRunner(svc, a.ledger, Gateway(a.tenancy, hold=late), clock=clock, owner="aaaa",
                               charges=a.tenancy)
        batch = await new_batch(svc, LINES)
        await runner_a.tick()
        await runner_a.tick()
        await asyncio.sleep(0.01)
        clock.now += 11
        runner_b = BatchRunner(svc, b.ledger, Gateway(b.tenancy), clock=clock, owner="bbbb", charges=b.tenancy)
        await run_until([runner_b], svc, batch.id, {states.COMPLETED})
        before = await counters(b.tenancy)
        late.set()  # A's answers arrive now
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert await counters(b.tenancy) == before
        assert (before["daily"], before["batch"]) == (LINES * (PROMPT + COMPLETION),) * 2
        await runner_a.stop()
        if kind == "redis":
            assert before["requests"] == LINES
            for x in (a.tenancy, b.tenancy, a.ledger, b.ledger):
                await x.close()
        await svc.close()

    asyncio.run(go())
