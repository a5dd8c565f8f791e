"""The client's side of a relayed stream, written without a coroutine per event.

uvicorn hands the app ``send``, a coroutine per message. Relaying an SSE stream through it
costs each token event a chain of task wake-ups: the engine read wakes the relay task,
which awaits ``send``. ``ClientWriter`` writes an event straight onto the client's
connection from the engine connection's read callback (cluster.gateway.stream.relay),
framed as uvicorn frames it (chunked transfer encoding); the response's start and its end
still go through ``send``, so uvicorn's state (keep-alive, completion) stays its own.

Each write to a loopback connection is a system call whose cost is of the order of the
gateway's own work on an event (issue 34's profile): the response head (uvicorn's write of
the start) is held to leave with the stream's first events (``hold``), and a stream whose
last event arrives with the engine's end has the chunked terminator written with it
(``write(..., last=True)``, then ``end``): two writes a stream fewer, nothing delayed.

Only for uvicorn's httptools cycle, whose ``send`` is a bound method of the request's
cycle; anything else (another server, a test transport) gets None and the relay awaits
``send`` as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from cluster.gateway.edge.connections import GONE_KEY, GuardedProtocol

_TERMINATOR = b"0\r\n\r\n"  # the chunked body's end
_END = {"type": "http.response.body", "body": b"", "more_body": False}


class _Held:
    """The cycle's transport while the response head is held: uvicorn's write of the head is
    kept and goes out with the next write (uvicorn's own, or the writer's); everything else is
    the transport's."""

    __slots__ = ("cycle", "real", "head")

    def __init__(self, cycle: RequestResponseCycle):
        self.cycle, self.real = cycle, cycle.transport
        self.head = b""

    def write(self, data: bytes) -> None:
        if not self.head:
            self.head = data
            return
        self.cycle.transport = self.real
        if not self.real.is_closing():
            self.real.write(self.head + data)

    def take(self) -> bytes:
        """The real transport back on the cycle; what was held."""
        self.cycle.transport = self.real
        return self.head

    def close(self) -> None:
        if self.take() and not self.real.is_closing():
            self.real.write(self.head)
        self.real.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _Ended:
    """The cycle's transport while uvicorn completes a response whose terminator is out already."""

    __slots__ = ("real",)

    def __init__(self, real: Any):
        self.real = real

    def write(self, data: bytes) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class ClientWriter:
    __slots__ = ("_cycle", "ended", "watched")

    def __init__(self, cycle: RequestResponseCycle):
        self._cycle = cycle
        self.ended = False  # the chunked terminator is written: ``end`` completes the response without it
        # The connection is owc's (cluster.gateway.edge.connections): it tells ``lost``'s future of its loss.
        self.watched = isinstance(getattr(getattr(cycle, "on_response", None), "__self__", None), GuardedProtocol)

    def lost(self) -> asyncio.Future[None]:
        """A future resolved when the client's connection is lost (only where ``watched``): what
        a task awaiting uvicorn's ``receive`` for its http.disconnect would tell, without the task."""
        c = self._cycle
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if c.disconnected:
            future.set_result(None)
        else:
            c.scope[GONE_KEY] = future  # type: ignore[literal-required]
            # As ``receive`` does before it waits: uvicorn pauses reading a connection whose body
            # came faster than the app read it; paused, the client's FIN would never be seen.
            c.flow.resume_reading()
        return future

    @property
    def usable(self) -> bool:
        """The response has started with chunked encoding and is not complete."""
        c = self._cycle
        return c.response_started and c.chunked_encoding is True and not c.response_complete

    def hold(self) -> None:
        """Hold what uvicorn writes next (the response head) to go out with the write after it
        (the first events, or a whole body): one system call, not two. ``release`` when none
        follows at once."""
        c = self._cycle
        if type(c.transport) is not _Held:
            c.transport = _Held(c)

    def release(self) -> None:
        """What is held, written now."""
        transport = self._cycle.transport
        if type(transport) is _Held and (held := transport.take()) and not transport.real.is_closing():
            transport.real.write(held)

    def write(self, body: bytes, *, last: bool = False) -> bool:
        """Write ``body`` as one chunk (after a held head; ``last``: with the chunked terminator,
        the stream's end); True: the client's connection is full (it reads slower than the engine
        writes: pause the engine's read until ``drain``)."""
        c = self._cycle
        transport, held = c.transport, b""
        if type(transport) is _Held:
            held = transport.take()
            transport = transport.real
        # Closing: the client reset its connection in this same loop turn, before uvicorn heard
        # of it (uvloop closes the transport, then calls connection_lost): a write would raise.
        if (body or held) and not c.disconnected and not transport.is_closing():
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if last:
                data += _TERMINATOR
                self.ended = True
            transport.write(held + data if held else data)
        return c.flow.write_paused

    async def end(self, send: Any) -> None:
        """The response's end through ``send`` (uvicorn's state: complete, keep-alive), its
        terminator not written twice."""
        self.release()
        if not self.ended:
            await send(_END)
            return
        c = self._cycle
        real = c.transport
        c.transport = _Ended(real)
        try:
            await send(_END)
        finally:
            c.transport = real

    async def drain(self) -> None:
        """Until the client's connection takes writes again (or is gone)."""
        c = self._cycle
        if c.flow.write_paused and not c.disconnected:
            await c.flow.drain()


def client_writer(send: Any) -> ClientWriter | None:
    cycle = getattr(send, "__self__", None)
    return ClientWriter(cycle) if isinstance(cycle, RequestResponseCycle) else None
