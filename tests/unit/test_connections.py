"""The connection table: at the bound the idle-longest connection makes room; with none
idle the new one is refused; the bound stays below the open-file limit."""

from __future__ import annotations

import pytest

from cluster.gateway.edge.connections import FD_RESERVE, Bounds, ConnectionGuard, connection_bound


class Conn:
    def __init__(self, name):
        self.name, self.evicted = name, False

    def evict(self):
        self.evicted = True


def guard(n):
    closed = []
    g = ConnectionGuard(Bounds(1, 1, 1, 1024, n), on_close=closed.append)
    return g, closed


def test_the_idle_longest_makes_room_and_busy_ones_are_never_evicted():
    g, closed = guard(3)
    a, b, c, d, e = (Conn(x) for x in "abcde")
    for x in (a, b, c):
        assert g.admit(x)
    g.busy(a)       # a has a request in flight
    g.idle(b)       # b answered a request just now: idle, but the newest idle
    assert g.admit(d) and c.evicted and not b.evicted and not a.evicted
    assert closed == ["evicted"]
    g.busy(b)
    g.busy(d)
    assert not g.admit(e) and closed == ["evicted", "over_capacity"]
    g.forget(a)
    assert g.admit(e) and g.live == 3


@pytest.mark.parametrize(("configured", "open_files", "bound"), [
    (None, 1024, (1024 - FD_RESERVE) // 2),
    (100, 1024, 100),
    (10_000, 1024, (1024 - FD_RESERVE) // 2),   # lowered to what the open files allow
    (None, 100, 1),
])
def test_connection_bound(configured, open_files, bound):
    assert connection_bound(configured, open_files) == bound
