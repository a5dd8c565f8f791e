"""What the client's connection is written, on a real uvicorn cycle (cluster.gateway.edge.client_writer,
cluster.gateway.stream.relay): the response head leaves in the same write as the stream's first
events (or a whole body), a stream whose last event comes with the engine's end has its chunked
terminator in that write, and uvicorn still completes the response (keep-alive, on_response)
once. Each write is a system call (issue 34: two a stream fewer). The bytes are the same HTTP."""

from __future__ import annotations

import asyncio
import logging

import httptools
import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from cluster.gateway.context import Delivery, Job
from cluster.gateway.edge.client_writer import client_writer
from cluster.gateway.stream.relay import _relay_stream, respond
from cluster.gateway.upstream.engine_client import EngineClient, Response, _Conn
from cluster.process import free_port

HEAD = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
EVENTS = [HEAD + b'"delta":{"content":"t%d"},"finish_reason":null}]}\n\n' % i for i in range(6)] + [b"data: [DONE]\n\n"]


class Transport:
    """The client's side: every write kept."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _cycle(transport: Transport, *, keep_alive: bool = True) -> tuple[RequestResponseCycle, list[int]]:
    completed: list[int] = []
    cycle = RequestResponseCycle(
        scope={"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []},  # type: ignore[arg-type]
        transport=transport, flow=FlowControl(transport), logger=logging.getLogger("t"),  # type: ignore[arg-type]
        access_logger=logging.getLogger("t"), access_log=False, default_headers=[], message_event=asyncio.Event(),
        expect_100_continue=False, keep_alive=keep_alive, on_response=lambda: completed.append(1))
    return cycle, completed


async def _engine(writes: list[bytes], *, pause_s: float = 0.01):
    """An engine answering with these raw body writes (already chunk-framed), a pause between them."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for w in writes:
            writer.write(w)
            await writer.drain()
            await asyncio.sleep(pause_s)
        writer.close()

    port = free_port()
    return await asyncio.start_server(handle, "127.0.0.1", port), port


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _parsed(data: bytes) -> tuple[int, bytes, bool]:
    """(status, body, complete) of the HTTP response the client received."""
    out: dict = {"body": b"", "complete": False}

    class P:
        def on_body(self, body: bytes) -> None:
            out["body"] += body

        def on_message_complete(self) -> None:
            out["complete"] = True

    parser = httptools.HttpResponseParser(P())
    parser.feed_data(data)
    return parser.get_status_code(), out["body"], out["complete"]


async def _relay(writes: list[bytes], *, keep_alive: bool = True, pause_s: float = 0.01):
    server, port = await _engine(writes, pause_s=pause_s)
    async with server:
        client = EngineClient(connect_timeout_s=2)
        resp = await client.post("127.0.0.1", port, "/v1/chat/completions", b"{}", {})
        first = await anext(aiter(resp.chunks()))
        transport = Transport()
        cycle, completed = _cycle(transport, keep_alive=keep_alive)
        job = Job(request_id="r", route="/v1/chat/completions", model="m", tenant="t", data={}, body=b"{}",
                  stream=True, headers={})
        delivery = Delivery()
        done = await _relay_stream([resp], first, cycle.send, out_headers=[], job=job, delivery=delivery,
                                   gone=asyncio.get_running_loop().create_future(), timed_out=lambda: False,
                                   on_broken=lambda: None, resume=None, writer=client_writer(cycle.send))
        client.close()
    return done, transport, cycle, completed


async def test_the_head_leaves_with_the_first_events_and_the_terminator_with_the_last():
    # The first read holds one event; the last read the last event, [DONE] and the engine's end.
    writes = [_chunk(e) for e in EVENTS[:-2]] + [_chunk(EVENTS[-2]) + _chunk(EVENTS[-1]) + b"0\r\n\r\n"]
    done, transport, cycle, completed = await _relay(writes)
    assert done and cycle.response_complete and completed == [1]
    status, body, complete = _parsed(b"".join(transport.writes))
    assert (status, body, complete) == (200, b"".join(EVENTS), True)
    assert transport.writes[0].startswith(b"HTTP/1.1 200") and EVENTS[0] in transport.writes[0]  # one write
    assert transport.writes[-1].endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")  # the end in the last event's write
    assert len(transport.writes) == len(writes)  # a write per engine read, none for the head or the end alone
    assert not transport.closed


async def test_a_stream_whose_engine_ends_in_a_read_of_its_own_ends_in_a_write_of_its_own():
    writes = [_chunk(e) for e in EVENTS] + [b"0\r\n\r\n"]
    done, transport, cycle, completed = await _relay(writes)
    assert done and completed == [1]
    assert _parsed(b"".join(transport.writes)) == (200, b"".join(EVENTS), True)
    assert transport.writes[-1] == b"0\r\n\r\n"


async def test_the_head_is_not_held_when_the_first_bytes_hold_no_whole_event():
    """The client learns the stream started (its head) without waiting for the engine's next read."""
    half = len(EVENTS[0]) // 2
    writes = [_chunk(EVENTS[0][:half]), _chunk(EVENTS[0][half:])] + [_chunk(e) for e in EVENTS[1:]] + [b"0\r\n\r\n"]
    done, transport, cycle, completed = await _relay(writes, pause_s=0.05)
    assert done and completed == [1]
    assert transport.writes[0].startswith(b"HTTP/1.1 200") and transport.writes[0].endswith(b"\r\n\r\n")
    assert b"data:" not in transport.writes[0]  # the head alone: written before the rest of the event came
    assert _parsed(b"".join(transport.writes)) == (200, b"".join(EVENTS), True)


async def test_a_connection_closed_after_the_response_has_it_all():
    writes = [_chunk(e) for e in EVENTS[:-1]] + [_chunk(EVENTS[-1]) + b"0\r\n\r\n"]
    done, transport, cycle, completed = await _relay(writes, keep_alive=False)
    assert done and completed == [1] and transport.closed
    assert _parsed(b"".join(transport.writes)) == (200, b"".join(EVENTS), True)


@pytest.mark.parametrize("keep_alive", [True, False])
async def test_a_whole_body_leaves_with_its_head(keep_alive: bool):
    body = b'{"id":"c","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}'

    class Engine:  # the engine's answer, read whole already
        status, headers = 200, {"content-type": "application/json"}

        def release(self) -> None:
            pass

        def close(self) -> None:
            pass

    transport = Transport()
    cycle, completed = _cycle(transport, keep_alive=keep_alive)
    job = Job(request_id="r", route="/v1/chat/completions", model="m", tenant="t", data={}, body=b"{}",
              stream=False, headers={})
    await respond(Engine(), body, cycle.send, job=job, delivery=Delivery(),  # type: ignore[arg-type]
                  gone=asyncio.get_running_loop().create_future(), timed_out=lambda: False, on_broken=lambda: None,
                  writer=client_writer(cycle.send))
    assert len(transport.writes) == 1 and completed == [1] and transport.closed is not keep_alive
    assert _parsed(transport.writes[0]) == (200, body, True)


def test_a_pooled_connection_paused_by_a_slow_client_reads_again():
    """A client whose side was full at the stream's last read paused the engine's read; back in
    the pool, the connection must read its next answer (else that request waits for its timeout)."""
    resumed: list[bool] = []

    class T(Transport):
        def pause_reading(self) -> None:
            resumed.append(False)

        def resume_reading(self) -> None:
            resumed.append(True)

    conn = _Conn()
    conn.connection_made(T())
    conn._keep_alive, conn.complete = True, True
    client = EngineClient(connect_timeout_s=1)
    resp = Response(conn, client, ("127.0.0.1", 1), 200, {})
    resp.pause()
    assert conn.paused and resumed == [False]
    resp.release()
    assert not conn.paused and resumed == [False, True]
    assert client._idle[("127.0.0.1", 1)] == [conn]


async def test_nothing_follows_an_end_already_written():
    """An engine that sends bytes after its answer (here: not HTTP) fails its connection after
    the client got the whole stream, its end included: no error event after the terminator."""
    writes = [_chunk(e) for e in EVENTS[:-1]] + [_chunk(EVENTS[-1]) + b"0\r\n\r\nnot http at all\r\n\r\n"]
    done, transport, cycle, completed = await _relay(writes)
    assert done and completed == [1] and cycle.response_complete
    assert _parsed(b"".join(transport.writes)) == (200, b"".join(EVENTS), True)
    assert b"".join(transport.writes).endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")


async def test_the_disconnect_watch_reads_the_connection_again_as_receive_would():
    """uvicorn pauses reading a connection whose body came faster than the app read it, and its
    ``receive`` resumes it before waiting. The future that replaces a task awaiting ``receive``
    (ClientWriter.lost) must resume it too: paused, the client's FIN is never seen, and a client
    that left would not abort the engine's request."""
    resumed: list[bool] = []

    class T(Transport):
        def resume_reading(self) -> None:
            resumed.append(True)

    transport = T()
    cycle, _ = _cycle(transport)
    cycle.flow.pause_reading()  # what uvicorn's on_body does past its high-water mark
    lost = client_writer(cycle.send).lost()
    assert not cycle.flow.read_paused and resumed == [True] and not lost.done()
    cycle.disconnected = True
    assert client_writer(cycle.send).lost().done()  # already gone: resolved at once
