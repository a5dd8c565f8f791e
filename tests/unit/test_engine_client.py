"""The engine-hop HTTP client against scripted servers: de-chunking, keep-alive reuse,
stale pooled connections, refused connections, aborts."""

from __future__ import annotations

import asyncio

import pytest

from cluster.gateway.upstream.engine_client import ConnectFailed, EngineClient, EngineError
from cluster.process import free_port


class Scripted:
    """A TCP server that answers each request on a connection with the next scripted reply."""

    def __init__(self, replies: list[bytes], close_after: int | None = None):
        self.replies = replies
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while self.replies:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
                self.requests.append(head + await reader.readexactly(length))
                writer.write(self.replies.pop(0))
                await writer.drain()
                served += 1
                if self.close_after is not None and served >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass
        writer.close()


async def _serve(s: Scripted):
    port = free_port()
    server = await asyncio.start_server(s.handle, "127.0.0.1", port)
    return server, port


CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" \
          b"6\r\ndata: \r\n3\r\nab\n\r\n0\r\n\r\n"
PLAIN = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def test_chunked_body_and_keep_alive_reuse():
    s = Scripted([CHUNKED, PLAIN])
    server, port = await _serve(s)
    up = EngineClient(connect_timeout_s=2)
    r = await up.post("127.0.0.1", port, "/v1/x", b'{"a":1}', {"X-Request-Id": "r1"})
    assert r.status == 200 and r.headers["content-type"] == "text/event-stream"
    assert b"".join([c async for c in r.chunks()]) == b"data: ab\n"
    r.release()
    r = await up.post("127.0.0.1", port, "/v1/x", b"{}", {})
    assert (r.status, await r.read()) == (400, b"{}")
    r.release()
    assert s.connections == 1  # the second request reused the first connection
    assert s.requests[0].startswith(b"POST /v1/x HTTP/1.1\r\n") and b"X-Request-Id: r1" in s.requests[0]
    assert s.requests[0].endswith(b'\r\n\r\n{"a":1}')
    up.close()
    server.close()


async def test_stale_pooled_connection_is_retried_on_a_fresh_one():
    s = Scripted([PLAIN, PLAIN], close_after=1)  # the server closes after each reply
    server, port = await _serve(s)
    up = EngineClient(connect_timeout_s=2)
    for _ in range(2):
        r = await up.post("127.0.0.1", port, "/", b"{}", {})
        assert r.status == 400 and await r.read() == b"{}"
        r.release()
    assert s.connections == 2
    server.close()


async def test_refused_connection_is_connect_failed():
    with pytest.raises(ConnectFailed):
        await EngineClient(connect_timeout_s=2).post("127.0.0.1", free_port(), "/", b"{}", {})


async def test_engine_dying_under_a_request_on_a_pooled_connection_is_lost_not_refused():
    """A non-streamed request's headers come only at the end: an engine killed meanwhile breaks the
    pooled connection the request went out on, and the fresh connection tried next is refused.
    That is an engine lost with the request (the gateway answers 502 if no retry is left), not a
    refused connection (503: nothing was sent)."""
    second = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.readuntil(b"\r\n\r\n{}")
        writer.write(PLAIN)
        await reader.readuntil(b"\r\n\r\n{}")  # the second request arrives and is never answered
        second.set()
        await asyncio.sleep(30)

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    up = EngineClient(connect_timeout_s=2)
    r = await up.post("127.0.0.1", port, "/", b"{}", {})
    assert (r.status, await r.read()) == (400, b"{}")
    r.release()
    pending = asyncio.ensure_future(up.post("127.0.0.1", port, "/", b"{}", {}))
    await asyncio.wait_for(second.wait(), 5)
    server.close()  # the engine is killed: it listens no more, and the request's connection is reset
    writers[0].transport.abort()
    with pytest.raises(EngineError) as e:
        await asyncio.wait_for(pending, 5)
    assert not isinstance(e.value, ConnectFailed), e.value
    assert len(writers) == 1  # the request went out on the pooled connection


async def test_engine_closing_mid_body_is_an_error_and_close_aborts():
    partial = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    s = Scripted([partial], close_after=1)
    server, port = await _serve(s)
    up = EngineClient(connect_timeout_s=2)
    r = await up.post("127.0.0.1", port, "/", b"{}", {})
    got = []
    with pytest.raises(EngineError):
        async for c in r.chunks():
            got.append(c)
    assert got == [b"abc"]
    r.close()
    assert not up._idle.get(("127.0.0.1", port))  # a broken connection is never pooled
    server.close()


def _slow_connect(base: type[asyncio.AbstractEventLoop]) -> type[asyncio.AbstractEventLoop]:
    """A loop whose connections are handed over only once their first events have run: what a
    gateway's busy loop does between the connect and the request's write."""

    class Loop(base):  # type: ignore[misc, valid-type]
        async def create_connection(self, *args, **kwargs):
            got = await super().create_connection(*args, **kwargs)
            await asyncio.sleep(0.05)
            return got

    return Loop


@pytest.mark.parametrize("base", ["asyncio", "uvloop"])
def test_engine_resetting_a_connection_as_it_accepts_it_is_a_refusal_nothing_sent(base):
    """An engine SIGKILLed while the gateway connects to it: the connection is accepted (the
    kernel finishes the handshake of a dying process) and reset before the request is written.
    Nothing was sent, so it is a refusal another replica may take. Before, the write failed on
    the closed transport (an AssertionError, or uvloop's RuntimeError) and the client got a 500
    "internal gateway error" (a CI run of test_routing's SIGKILL test)."""
    import uvloop

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()  # RST: the engine's process is gone

    async def main() -> None:
        port = free_port()
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        try:
            with pytest.raises(ConnectFailed, match="before the request was sent"):
                await EngineClient(connect_timeout_s=2).post("127.0.0.1", port, "/", b"{}", {})
        finally:
            server.close()

    base_loop = asyncio.SelectorEventLoop if base == "asyncio" else uvloop.Loop
    with asyncio.Runner(loop_factory=_slow_connect(base_loop)) as runner:
        runner.run(main())
