"""A running batch's lines, leased: which lines are taken by which runner until when, which are
done (and by whom), and the close lease the one runner assembling the output files holds. Lines
are numbered 0..total-1 in input order. A runner claims a few lines at a time; a lease it does
not renew (its process died) expires and the line is claimed again; a line is done once, by
the first runner to finish it (``finish`` answers False to a later one), so the output holds one
line per custom_id. In process here (one gateway process, tests); in Redis
(cluster.batch.redis_ledger) for every gateway process."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

OK, ERR = "ok", "err"


@dataclass(frozen=True)
class Progress:
    completed: int  # lines done whose answer was a success (the output file)
    failed: int  # lines done with an error (the error file)
    claimed: int  # lines ever handed out (the cursor)
    live: int  # leases not expired at ``now``

    def done(self, total: int) -> bool:
        return self.completed + self.failed >= total


class LineLedger(Protocol):
    async def claim(self, batch_id: str, *, total: int, n: int, now: float, ttl_s: float) -> list[int]:
        """Up to ``n`` lines to run: expired leases first, then lines never claimed."""

    async def renew(self, batch_id: str, lines: list[int], *, now: float, ttl_s: float) -> None:
        """Extend the leases of ``lines`` (still running here)."""

    async def release(self, batch_id: str, lines: list[int]) -> None:
        """Give the leases of ``lines`` back unfinished (dropped before they reached an engine)."""

    async def finish(self, batch_id: str, line: int, *, outcome: str, owner: str, charge: str = "") -> bool:
        """Mark the line done (``outcome`` OK or ERR, its result file written by ``owner``):
        True when this call did, False when it was done already. ``charge``: what the line owes
        (its tenancy charge, opaque here), kept pending with the done-mark, in the same step,
        until ``settled``, so that a process dying in between leaves it to another."""

    async def charges(self, batch_id: str) -> dict[int, str]:
        """line -> charge of the done lines whose charge is not settled yet."""

    async def settled(self, batch_id: str, line: int) -> None:
        """The line's pending charge is settled: forget it."""

    async def progress(self, batch_id: str, *, now: float) -> Progress: ...

    async def done_lines(self, batch_id: str) -> dict[int, tuple[str, str]]:
        """line -> (outcome, owner) of every line done."""

    async def take_close(self, batch_id: str, owner: str, *, ttl_s: float) -> bool:
        """The right to assemble the batch's output files for ``ttl_s`` (one runner at a time)."""

    async def drop(self, batch_id: str) -> None:
        """Forget the batch's lines (its output files are recorded)."""

    async def close(self) -> None: ...


@dataclass
class _Lines:
    cursor: int = 0
    leases: dict[int, float] = field(default_factory=dict)  # line -> lease expiry
    done: dict[int, tuple[str, str]] = field(default_factory=dict)
    charges: dict[int, str] = field(default_factory=dict)
    close_until: float = 0.0
    close_owner: str = ""


class MemoryLedger:
    def __init__(self) -> None:
        self._b: dict[str, _Lines] = {}

    def _of(self, batch_id: str) -> _Lines:
        return self._b.setdefault(batch_id, _Lines())

    async def claim(self, batch_id: str, *, total: int, n: int, now: float, ttl_s: float) -> list[int]:
        s = self._of(batch_id)
        out = [ln for ln, exp in sorted(s.leases.items(), key=lambda kv: kv[1]) if exp <= now][:n]
        while len(out) < n and s.cursor < total:
            out.append(s.cursor)
            s.cursor += 1
        for ln in out:
            s.leases[ln] = now + ttl_s
        return out

    async def renew(self, batch_id: str, lines: list[int], *, now: float, ttl_s: float) -> None:
        s = self._of(batch_id)
        for ln in lines:
            if ln in s.leases:
                s.leases[ln] = now + ttl_s

    async def release(self, batch_id: str, lines: list[int]) -> None:
        s = self._of(batch_id)
        for ln in lines:
            s.leases[ln] = 0.0  # expired: claimed again first

    async def finish(self, batch_id: str, line: int, *, outcome: str, owner: str, charge: str = "") -> bool:
        s = self._of(batch_id)
        s.leases.pop(line, None)
        if line in s.done:
            return False
        s.done[line] = (outcome, owner)
        if charge:
            s.charges[line] = charge
        return True

    async def charges(self, batch_id: str) -> dict[int, str]:
        return dict(self._of(batch_id).charges)

    async def settled(self, batch_id: str, line: int) -> None:
        self._of(batch_id).charges.pop(line, None)

    async def progress(self, batch_id: str, *, now: float) -> Progress:
        s = self._of(batch_id)
        ok = sum(1 for o, _ in s.done.values() if o == OK)
        return Progress(ok, len(s.done) - ok, s.cursor, sum(1 for e in s.leases.values() if e > now))

    async def done_lines(self, batch_id: str) -> dict[int, tuple[str, str]]:
        return dict(self._of(batch_id).done)

    async def take_close(self, batch_id: str, owner: str, *, ttl_s: float) -> bool:
        s, now = self._of(batch_id), time.monotonic()
        if s.close_until > now and s.close_owner != owner:
            return False
        s.close_until, s.close_owner = now + ttl_s, owner
        return True

    async def drop(self, batch_id: str) -> None:
        self._b.pop(batch_id, None)

    async def close(self) -> None:
        return None
