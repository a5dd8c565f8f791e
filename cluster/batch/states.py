"""A batch's state machine, pure: which status may follow which, and the timestamp each one sets.

    validating -> in_progress -> finalizing -> completed
         |             |             |
         +-> failed <--+-------------+
         +-> cancelling -> cancelled   (also from in_progress)
         +-> expired                   (also from in_progress and finalizing: the window ran out)
"""

from __future__ import annotations

import dataclasses

from cluster.batch.errors import BatchApiError
from cluster.batch.records import BatchRecord

VALIDATING, IN_PROGRESS, FINALIZING, COMPLETED = "validating", "in_progress", "finalizing", "completed"
FAILED, EXPIRED, CANCELLING, CANCELLED = "failed", "expired", "cancelling", "cancelled"
STATUSES = (VALIDATING, FAILED, IN_PROGRESS, FINALIZING, COMPLETED, EXPIRED, CANCELLING, CANCELLED)
TERMINAL = frozenset({COMPLETED, FAILED, EXPIRED, CANCELLED})
NEXT: dict[str, frozenset[str]] = {
    VALIDATING: frozenset({IN_PROGRESS, FAILED, CANCELLING, EXPIRED}),
    IN_PROGRESS: frozenset({FINALIZING, FAILED, CANCELLING, EXPIRED}),
    FINALIZING: frozenset({COMPLETED, FAILED, EXPIRED}),
    CANCELLING: frozenset({CANCELLED}),
    **{s: frozenset() for s in TERMINAL},
}
STAMP = {s: f"{s}_at" for s in STATUSES if s != VALIDATING}  # validating's time is created_at


class IllegalTransition(ValueError):
    pass


def advance(b: BatchRecord, to: str, now: float) -> BatchRecord:
    """``b`` in status ``to``, its timestamp set; IllegalTransition when ``to`` may not follow."""
    if to not in NEXT.get(b.status, frozenset()):
        raise IllegalTransition(f"a batch {b.status} cannot become {to}")
    return dataclasses.replace(b, status=to, **{STAMP[to]: int(now)})


def cancel(b: BatchRecord, now: float, *, running: bool) -> BatchRecord:
    """A cancel request: cancelling, then cancelled at once when nothing runs its lines (no
    runner holds it); a batch already cancelling or cancelled is left as it is; a finished one
    refuses (400)."""
    if b.status in (CANCELLING, CANCELLED):
        return b
    if b.status not in NEXT or CANCELLING not in NEXT[b.status]:
        raise BatchApiError(400, f"Cannot cancel a batch with status '{b.status}'.", code="batch_not_cancellable")
    b = advance(b, CANCELLING, now)
    return b if running else advance(b, CANCELLED, now)


def expire(b: BatchRecord, now: float) -> BatchRecord | None:
    """The batch after its completion window closed at ``now`` (None: not due, or already
    finished). A cancelling batch ends cancelled; any other unfinished one expired."""
    if b.status in TERMINAL or now < b.expires_at:
        return None
    return advance(b, CANCELLED if b.status == CANCELLING else EXPIRED, now)
