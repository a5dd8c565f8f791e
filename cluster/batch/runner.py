"""The batch runner, one per gateway process: it takes batches from `validating` through
`in_progress` to `finalizing` and `completed` (or closes them `cancelled` / `expired` with partial
output), running their lines a few at a time through ``execute``, which the gateway wires to the
same admission and forwarding as interactive traffic at the lowest priority
(cluster.gateway.batches.execute). Every process runs one; they share the work through the
store: lines are leased (cluster.batch.ledger), a process that dies has its leases expire and
its lines run elsewhere, each line's result is written once, and one process at a time
assembles the output and error files. Never imports the gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from cluster.batch import states
from cluster.batch.ids import new_file_id
from cluster.batch.ledger import ERR, OK, LineLedger, Progress
from cluster.batch.output import Results, UsageSum, answered, assemble, input_offsets, read_line
from cluster.batch.records import BatchRecord, FileRecord
from cluster.batch.service import BatchService

log = logging.getLogger(__name__)
EXPIRED_LINE = ("batch_expired", "This request could not be executed before the completion window expired.")
CANCELLED_LINE = ("batch_cancelled", "This request was not executed: its batch was cancelled.")
UNLIMITED = 1 << 62  # output files are always stored (they do not count against the tenant's upload bound)


@dataclass
class LineCall:
    """One input line as the gateway executes it. ``sent`` is set once an engine slot is taken
    (a line still waiting for idle capacity may be dropped when its batch closes)."""

    tenant: str
    url: str
    body: Any
    batch_id: str
    custom_id: str
    line: int = -1  # its number in the input (0-based)
    sent: bool = False
    request_id: str = ""  # the gateway's request id, once admission has given it one
    charge: str | None = None  # what the line owes once answered (the gateway's tenancy charge), not settled


class LineCharges(Protocol):
    """Where a line's charge is settled (the gateway's tenancy): once per line whoever asks."""

    async def settle_line(self, batch_id: str, line: int, charge: str) -> None: ...

    async def release_lines(self, tenant: str, batch_id: str, lines: list[int] | None, *,
                            settled_only: bool = False) -> None: ...


@dataclass(frozen=True)
class LineAnswer:
    status: int
    body: Any  # the engine's JSON body, or the OpenAI error body
    request_id: str
    tokens: int = 0


Execute = Callable[[LineCall], Awaitable[LineAnswer]]


@dataclass
class RunnerHooks:
    """What the runner reports (the gateway's owc_batch_* metrics)."""

    line: Callable[[str, str], None] = lambda tenant, outcome: None  # a line done: ok | error | duplicate
    closed: Callable[[str], None] = lambda status: None  # a batch closed in this process, its final status


@dataclass
class _Local:
    """This process's work on one batch."""

    offsets: list[int] | None = None
    tasks: dict[int, asyncio.Task] = field(default_factory=dict)
    calls: dict[int, LineCall] = field(default_factory=dict)
    counts: tuple[int, int] = (-1, -1)


class BatchRunner:
    def __init__(self, service: BatchService, ledger: LineLedger, execute: Execute, *,
                 clock: Callable[[], float] = time.time, hooks: RunnerHooks | None = None, owner: str | None = None,
                 charges: LineCharges | None = None):
        self.service = service
        self.cfg = service.cfg
        self.ledger = ledger
        self._execute = execute
        self._clock = clock
        self._hooks = hooks or RunnerHooks()
        self._charges = charges
        self.owner = owner or os.urandom(6).hex()
        self.results = Results(self.cfg.store_dir)
        self._local: dict[str, _Local] = {}
        self.backlog: dict[str, int] = {}  # batch status -> batches, as the last tick saw them
        self.pending = 0  # lines of those batches not done yet

    @property
    def in_flight(self) -> int:
        return sum(len(w.tasks) for w in self._local.values())

    async def tick(self) -> None:
        """One look at every batch with work: advance it, claim lines, close it."""
        batches = await self.service.index.active()
        seen: dict[str, int] = {}
        running = [b for b in batches if b.status in (states.VALIDATING, states.IN_PROGRESS)]
        for b in batches:
            seen[b.status] = seen.get(b.status, 0) + 1
            try:
                await self._step(b, share=max(1, self.cfg.lines_in_flight // max(1, len(running))))
            except Exception:  # noqa: BLE001 - one batch's trouble (store, disk) must not stop the others
                log.exception("batch %s: runner step failed", b.id)
        self.backlog = seen
        self.pending = sum(max(0, b.total - b.completed - b.failed) for b in batches if b.status not in states.TERMINAL)
        for gone in set(self._local) - {b.id for b in batches}:
            self._drop_local(gone)

    async def _update(self, b: BatchRecord, change: Callable[[BatchRecord], BatchRecord]) -> BatchRecord:
        return await self.service.index.update_batch(b.tenant, b.id, change) or b

    async def _step(self, b: BatchRecord, *, share: int) -> None:
        now = self._clock()
        if b.status in (states.VALIDATING, states.IN_PROGRESS) and now >= b.expires_at:
            b = await self._update(b, lambda r: states.expire(r, now) or r)
        if b.status == states.VALIDATING:
            b = await self._start(b, now)
        if b.status == states.IN_PROGRESS:
            p = await self.ledger.progress(b.id, now=now)
            if p.done(b.total):
                b = await self._update(b, lambda r: _counted(
                    states.advance(r, states.FINALIZING, now) if r.status == states.IN_PROGRESS else r, p))
            else:
                await self._run(b, p, now, share)
                return
        if b.status in (states.FINALIZING, states.CANCELLING) or b.status in states.TERMINAL:
            await self._close(b, now)

    async def _start(self, b: BatchRecord, now: float) -> BatchRecord:
        """validating -> in_progress once its input file is there (failed when it is gone)."""
        rec = await self.service.index.file(b.tenant, b.input_file_id)
        try:  # the batch keeps its input's content: a delete of the file from now on takes no line away
            await asyncio.to_thread(self.results.keep_input, b.id, self.service.contents.path(b.input_file_id))
        except FileNotFoundError:
            rec = None
        if rec is None:
            err = [{"code": "invalid_file", "message": "the input file no longer exists", "param": "input_file_id",
                    "line": None}]
            return await self._update(b, lambda r: dataclasses.replace(states.advance(r, states.FAILED, now), errors=err)
                                      if r.status == states.VALIDATING else r)
        return await self._update(b, lambda r: states.advance(r, states.IN_PROGRESS, now)
                                  if r.status == states.VALIDATING else r)

    # -- lines ----------------------------------------------------------------------------------

    def _input(self, b: BatchRecord):
        """The batch's link to its input (a batch started before links were made: the file itself)."""
        kept = self.results.input_of(b.id)
        return kept if kept.exists() else self.service.contents.path(b.input_file_id)

    async def _work(self, b: BatchRecord) -> _Local:
        w = self._local.get(b.id)
        if w is None:
            w = self._local[b.id] = _Local()
        if w.offsets is None:  # a 200 MB input is read once per process, off the event loop
            w.offsets = await asyncio.to_thread(input_offsets, self._input(b))
        return w

    async def _run(self, b: BatchRecord, p: Progress, now: float, share: int) -> None:
        w = await self._work(b)
        ttl = self.cfg.lease_ttl_s
        await self.ledger.renew(b.id, list(w.tasks), now=now, ttl_s=ttl)
        room = min(share - len(w.tasks), self.cfg.lines_in_flight - self.in_flight)
        if room > 0:
            for line in await self.ledger.claim(b.id, total=b.total, n=room, now=now, ttl_s=ttl):
                if line not in w.tasks and line < len(w.offsets):
                    w.tasks[line] = asyncio.get_running_loop().create_task(self._line(b, w, line))
        if (p.completed, p.failed) != w.counts:
            w.counts = (p.completed, p.failed)
            await self._update(b, lambda r: _counted(r, p) if r.status == states.IN_PROGRESS else r)

    async def _line(self, b: BatchRecord, w: _Local, line: int) -> None:
        try:
            obj = read_line(self._input(b), w.offsets[line])
            call = w.calls[line] = LineCall(b.tenant, obj["url"], obj["body"], b.id, obj["custom_id"], line)
            try:
                ans = await self._execute(call)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a gateway bug: that line's answer, not the batch's end
                log.exception("batch %s line %d failed in the gateway", b.id, line)
                ans = LineAnswer(500, {"error": {"message": "internal gateway error", "type": "server_error",
                                                 "param": None, "code": None}}, "")
            self.results.write(b.id, line, self.owner, answered(call.custom_id, ans.status, ans.request_id, ans.body))
            first = await self.ledger.finish(b.id, line, outcome=OK if ans.status < 400 else ERR, owner=self.owner,
                                             charge=call.charge or "")
            self._hooks.line(b.tenant, ("ok" if ans.status < 400 else "error") if first else "duplicate")
            if call.charge and self._charges is not None:
                if first:  # the done-mark won: this answer is the line's, and so is its charge
                    await self._settle(b.id, line, call.charge)
                else:  # a rerun's reservation, if the line was charged already (else its winner's settle takes it)
                    await self._charges.release_lines(b.tenant, b.id, [line], settled_only=True)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - store or disk: the lease lapses and the line runs again
            log.exception("batch %s line %d: result or charge not recorded (a line not done runs again once its "
                          "lease expires; a charge left pending is settled at the batch's close)", b.id, line)
        finally:
            w.tasks.pop(line, None)
            w.calls.pop(line, None)

    async def _settle(self, batch_id: str, line: int, charge: str) -> None:
        await self._charges.settle_line(batch_id, line, charge)
        await self.ledger.settled(batch_id, line)

    async def _settle_all(self, b: BatchRecord) -> None:
        """Charges left pending (a process died between a line's done-mark and its charge) settled,
        once each, and every reservation still held for the batch's lines given back."""
        if self._charges is None:
            return
        for line, charge in (await self.ledger.charges(b.id)).items():
            await self._settle(b.id, line, charge)
        await self._charges.release_lines(b.tenant, b.id, None)

    # -- closing --------------------------------------------------------------------------------

    async def _close(self, b: BatchRecord, now: float) -> None:
        """Once no line of it runs anywhere: its output and error files, its final status, and
        the batch retired. Lines still waiting for an engine slot here are dropped first."""
        w = self._local.get(b.id)
        if w is not None:
            unsent = [ln for ln in w.tasks if (call := w.calls.get(ln)) is None or not call.sent]
            for ln in unsent:
                w.tasks.pop(ln).cancel()
                w.calls.pop(ln, None)
            await self.ledger.release(b.id, unsent)
            if w.tasks:
                await self.ledger.renew(b.id, list(w.tasks), now=now, ttl_s=self.cfg.lease_ttl_s)
                return  # its lines in flight here finish first
        p = await self.ledger.progress(b.id, now=now)
        if b.status != states.FINALIZING and p.live:
            return  # another process's lines still run (or its leases have not expired yet)
        if not await self.ledger.take_close(b.id, self.owner, ttl_s=max(60.0, self.cfg.lease_ttl_s)):
            return
        await self._settle_all(b)
        done = await self.ledger.done_lines(b.id)
        written: dict[str, tuple[str, int, int]] = {}
        usage = UsageSum()
        if done or b.status in (states.EXPIRED, states.CANCELLING):
            written = await asyncio.to_thread(self._write_files, b, done, usage)
            for kind, got in written.items():
                await self._record(b, kind, got, now)
        out_id, err_id = (written[k][0] if k in written else None for k in ("output", "error"))
        final = {states.FINALIZING: states.COMPLETED, states.CANCELLING: states.CANCELLED}.get(b.status)
        p = await self.ledger.progress(b.id, now=now)

        def closed(r: BatchRecord) -> BatchRecord:
            if final is not None and r.status == b.status:
                r = states.advance(r, final, now)
            return dataclasses.replace(_counted(r, p), output_file_id=out_id, error_file_id=err_id, usage=usage.openai())

        b = await self._update(b, closed)
        await self.service.index.retire(b.tenant, b.id)
        await self.ledger.drop(b.id)
        self.results.remove(b.id)
        self._drop_local(b.id)
        self._hooks.closed(b.status)
        log.info("batch %s %s: %d completed, %d failed", b.id, b.status, b.completed, b.failed)

    def _write_files(self, b: BatchRecord, done: dict[int, tuple[str, str]],
                     usage: UsageSum) -> dict[str, tuple[str, int, int]]:
        """The output and error files written as part files: kind -> (file id, bytes, lines), an
        empty one left out; each line's tokens added to ``usage``."""
        contents = self.service.contents
        got = {False: [new_file_id(), 0, 0], True: [new_file_id(), 0, 0]}
        files = {k: os.fdopen(os.open(contents.part(v[0]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
                 for k, v in got.items()}
        try:
            # A line never run is in the error file, named by its custom_id: what to send again.
            missing = {states.EXPIRED: EXPIRED_LINE, states.CANCELLING: CANCELLED_LINE}.get(b.status)
            for is_err, data in assemble(self.results, b.id, done, total=b.total, missing=missing,
                                         custom_ids=self._custom_ids(b)):
                files[is_err].write(data)
                usage.add(data)
                got[is_err][1] += len(data)
                got[is_err][2] += 1
        finally:
            for f in files.values():
                f.close()
        out = {}
        for is_err, (fid, size, lines) in got.items():
            if lines:
                out["error" if is_err else "output"] = (fid, size, lines)
            else:
                contents.part(fid).unlink(missing_ok=True)
        return out

    def _custom_ids(self, b: BatchRecord) -> Iterator[str]:
        path = self._input(b)
        try:
            with path.open("rb") as f:
                for raw in f:
                    if raw.strip():
                        yield orjson.loads(raw).get("custom_id", "")
        except FileNotFoundError:  # the input file was deleted meanwhile: lines not done go unnamed
            while True:
                yield ""

    async def _record(self, b: BatchRecord, name: str, written: tuple[str, int, int], now: float) -> None:
        file_id, size, lines = written
        expiry = b.output_expires_s or self.cfg.file_expiry_s  # output_expires_after, anchored at created_at
        rec = FileRecord(file_id, b.tenant, size, now, int(now) + expiry,
                         f"{b.id}_{name}.jsonl", "batch_output", lines)
        await self.service.index.add_file(rec, max_tenant_bytes=UNLIMITED)
        self.service.contents.commit(file_id)

    def _drop_local(self, batch_id: str) -> None:
        w = self._local.pop(batch_id, None)
        for task in (w.tasks.values() if w else ()):
            task.cancel()

    async def stop(self) -> None:
        """Cancel this process's lines and give their leases back, so that the other processes
        run them at once (a process that dies without stopping has them retaken at expiry)."""
        held = {b: list(w.tasks) for b, w in self._local.items() if w.tasks}
        tasks = [t for w in self._local.values() for t in w.tasks.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._local.clear()
        for batch_id, lines in held.items():
            try:
                await self.ledger.release(batch_id, lines)
            except Exception:  # noqa: BLE001 - the store down: the leases lapse instead
                log.warning("batch %s: leases of %d lines not given back; they expire", batch_id, len(lines))


def _counted(r: BatchRecord, p: Progress) -> BatchRecord:
    return dataclasses.replace(r, completed=p.completed, failed=p.failed)

