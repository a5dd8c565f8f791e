"""The client's side of a relayed stream, written without a coroutine per event.

uvicorn hands the app ``send``, a coroutine per message. Relaying an SSE stream through it
costs each token event a chain of task wake-ups: the engine read wakes the relay task,
which awaits ``send``. ``ClientWriter`` writes an event straight onto the client's
connection from the engine connection's read callback (cluster.gateway.stream.relay),
framed as uvicorn frames it (chunked transfer encoding); the response's start and its end
still go through ``send``, so uvicorn's state (keep-alive, completion) stays its own.

Only for uvicorn's httptools cycle, whose ``send`` is a bound method of the request's
cycle; anything else (another server, a test transport) gets None and the relay awaits
``send`` as before.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle


class ClientWriter:
    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle):
        self._cycle = cycle

    @property
    def usable(self) -> bool:
        """The response has started with chunked encoding and is not complete."""
        c = self._cycle
        return c.response_started and c.chunked_encoding is True and not c.response_complete

    @property
    def gone(self) -> bool:
        return self._cycle.disconnected

    def write(self, body: bytes) -> bool:
        """Write ``body`` as one chunk; True: the client's connection is full (it reads slower than
        the engine writes: pause the engine's read until ``drain``)."""
        c = self._cycle
        # Closing: the client reset its connection in this same loop turn, before uvicorn heard
        # of it (uvloop closes the transport, then calls connection_lost): a write would raise.
        if body and not c.disconnected and not c.transport.is_closing():
            c.transport.write(b"%x\r\n%b\r\n" % (len(body), body))
        return c.flow.write_paused

    async def drain(self) -> None:
        """Until the client's connection takes writes again (or is gone)."""
        c = self._cycle
        if c.flow.write_paused and not c.disconnected:
            await c.flow.drain()


def client_writer(send: Any) -> ClientWriter | None:
    cycle = getattr(send, "__self__", None)
    return ClientWriter(cycle) if isinstance(cycle, RequestResponseCycle) else None
