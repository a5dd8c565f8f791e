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


async def test_a_request_sent_before_the_last_answer_completed_is_not_evictable_while_served():
    """A keep-alive client may send its next request as soon as it has the last answer's bytes,
    before uvicorn marks that answer complete (its end can leave with its last event:
    cluster.gateway.edge.client_writer). uvicorn then serves the request queued: the connection
    must not become idle (evictable at the bound) while it does."""
    import asyncio

    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from cluster.gateway.edge.connections import GuardedProtocol

    release = asyncio.Event()
    served: list[str] = []

    async def app(scope, receive, send):
        served.append(scope["path"])
        if scope["path"] == "/slow":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    class Transport:
        def __init__(self):
            self.out = b""

        def write(self, data):
            self.out += data

        def is_closing(self):
            return False

        def get_extra_info(self, name, default=None):
            return ("127.0.0.1", 1) if name in ("peername", "sockname") else default

        def pause_reading(self):
            pass

        def resume_reading(self):
            pass

        def set_write_buffer_limits(self, *a, **k):
            pass

        def close(self):
            pass

    config = Config(app=app, lifespan="off", log_level="warning")
    config.load()
    g = ConnectionGuard(Bounds(5, 5, 5, 8192, 10))
    proto = GuardedProtocol(config=config, server_state=ServerState(), app_state={}, guard=g)
    transport = Transport()
    proto.connection_made(transport)
    proto.data_received(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.01)
    proto.data_received(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")  # before /slow's answer is complete
    release.set()
    for _ in range(100):
        await asyncio.sleep(0)
        if proto in g._idle or served == ["/slow", "/next"]:
            break
    # /slow answered; /next is being served (or answered): idle only once it is complete
    assert served[0] == "/slow"
    assert (proto in g._idle) == (proto.cycle is not None and proto.cycle.response_complete)
    for _ in range(100):
        await asyncio.sleep(0)
    assert served == ["/slow", "/next"] and transport.out.count(b"HTTP/1.1 200") == 2
    assert proto in g._idle  # both answered: idle again
