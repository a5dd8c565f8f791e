"""A batch's state machine (cluster.batch.states), table-driven: every status pair, the timestamp
each transition sets, cancel and expiry."""

from __future__ import annotations

import itertools

import pytest

from cluster.batch import states as s
from cluster.batch.errors import BatchApiError
from cluster.batch.records import STAMPS, BatchRecord

ALLOWED = {
    (s.VALIDATING, s.IN_PROGRESS), (s.VALIDATING, s.FAILED), (s.VALIDATING, s.CANCELLING), (s.VALIDATING, s.EXPIRED),
    (s.IN_PROGRESS, s.FINALIZING), (s.IN_PROGRESS, s.FAILED), (s.IN_PROGRESS, s.CANCELLING),
    (s.IN_PROGRESS, s.EXPIRED), (s.FINALIZING, s.COMPLETED), (s.FINALIZING, s.FAILED), (s.FINALIZING, s.EXPIRED),
    (s.CANCELLING, s.CANCELLED),
}


def batch(status=s.VALIDATING, expires_at=1000) -> BatchRecord:
    return BatchRecord("batch_x", "t", "/v1/chat/completions", "file-x", "24h", status, 10.5, expires_at, total=3)


@pytest.mark.parametrize("frm,to", list(itertools.product(s.STATUSES, s.STATUSES)))
def test_transitions(frm, to):
    b = batch(frm)
    if (frm, to) in ALLOWED:
        out = s.advance(b, to, 123.9)
        assert out.status == to and getattr(out, f"{to}_at") == 123
        assert [k for k in STAMPS if getattr(out, k) is not None] == [f"{to}_at"]
    else:
        with pytest.raises(s.IllegalTransition):
            s.advance(b, to, 123)


def test_the_happy_path_sets_each_timestamp_once():
    b = batch()
    for i, to in enumerate((s.IN_PROGRESS, s.FINALIZING, s.COMPLETED), 1):
        b = s.advance(b, to, 100 * i)
    assert (b.in_progress_at, b.finalizing_at, b.completed_at) == (100, 200, 300)
    assert b.openai()["status"] == "completed" and b.openai()["created_at"] == 10


@pytest.mark.parametrize("status,running,out", [
    (s.VALIDATING, False, s.CANCELLED), (s.IN_PROGRESS, False, s.CANCELLED), (s.VALIDATING, True, s.CANCELLING),
    (s.IN_PROGRESS, True, s.CANCELLING), (s.CANCELLING, True, s.CANCELLING), (s.CANCELLED, False, s.CANCELLED),
    (s.FINALIZING, False, 400), (s.COMPLETED, False, 400), (s.FAILED, False, 400), (s.EXPIRED, False, 400),
])
def test_cancel(status, running, out):
    b = batch(status)
    if out == 400:
        with pytest.raises(BatchApiError) as e:
            s.cancel(b, 50, running=running)
        assert e.value.status == 400 and status in e.value.message
        return
    got = s.cancel(b, 50, running=running)
    assert got.status == out
    if status not in (s.CANCELLING, s.CANCELLED):
        assert got.cancelling_at == 50 and got.cancelled_at == (None if running else 50)


@pytest.mark.parametrize("status,now,out", [
    (s.VALIDATING, 999, None), (s.VALIDATING, 1000, s.EXPIRED), (s.IN_PROGRESS, 2000, s.EXPIRED),
    (s.FINALIZING, 2000, s.EXPIRED), (s.CANCELLING, 2000, s.CANCELLED), (s.COMPLETED, 2000, None),
    (s.CANCELLED, 2000, None),
])
def test_expire(status, now, out):
    got = s.expire(batch(status), now)
    assert (got.status if got else None) == out
