"""A stream relayed from the engine read straight onto the client's connection
(cluster.gateway.stream.relay, cluster.gateway.edge.client_writer): every event in order,
the engine's reading paused while the client's side is full and resumed once it drains,
a broken read raised to the relaying task, and the writer found only on uvicorn's cycle."""

from __future__ import annotations

import asyncio

from cluster.gateway.context import Delivery, Job
from cluster.gateway.edge.client_writer import client_writer
from cluster.gateway.stream.relay import _Events, _pump
from cluster.gateway.upstream.engine_client import EngineClient, EngineError
from cluster.process import free_port

EVENTS = [b'data: {"choices":[{"index":0,"delta":{"content":"t%d"}}]}\n\n' % i for i in range(400)]


def _job() -> Job:
    return Job(request_id="r", route="/v1/chat/completions", model="m", tenant="t", data={}, body=b"{}",
               stream=True, headers={})


async def _engine(events: list[bytes], *, break_after: int | None = None):
    """An engine that streams ``events`` as HTTP chunks, each in its own write."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i, e in enumerate(events):
            if break_after is not None and i == break_after:
                writer.transport.abort()
                return
            writer.write(b"%x\r\n%b\r\n" % (len(e), e))
            await writer.drain()
            if i % 10 == 0:  # events arrive over many reads
                await asyncio.sleep(0.002)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    port = free_port()
    return await asyncio.start_server(handle, "127.0.0.1", port), port


class SlowClient:
    """A client writer whose side fills every ``every`` writes until it drains."""

    def __init__(self, every: int):
        self.every = every
        self.out: list[bytes] = []
        self.paused = False
        self.gone = False
        self.drains = 0

    def write(self, body: bytes, *, last: bool = False) -> bool:  # as ClientWriter.write: True when its side is full
        assert not self.paused, "written while the client's side was full"
        self.out.append(body)
        self.last = last
        if len(self.out) % self.every == 0:
            self.paused = True
        return self.paused

    def release(self) -> None:  # as ClientWriter.release: no head held here
        pass

    async def drain(self) -> None:
        await asyncio.sleep(0.01)
        self.drains += 1
        self.paused = False


async def _open(port: int):
    client = EngineClient(connect_timeout_s=2)
    resp = await client.post("127.0.0.1", port, "/v1/chat/completions", b"{}", {})
    first = await anext(aiter(resp.chunks()))
    return client, resp, first


async def test_every_event_in_order_and_reading_paused_while_the_client_is_full():
    server, port = await _engine(EVENTS)
    async with server:
        client, resp, first = await _open(port)
        delivery = Delivery()
        writer = SlowClient(every=1)
        await _pump(resp, first, _Events(_job(), delivery), writer)
        assert b"".join(writer.out) == b"".join(EVENTS)
        assert writer.drains >= len(writer.out) - 1 >= 5  # it waited for the client after each write
        assert delivery.ttft_s is not None and len(delivery.itl) >= len(writer.out) - 1
        assert resp._conn.complete and resp._conn.sink is None  # pooled, it writes to no client
        client.close()


async def test_a_broken_engine_read_is_raised_to_the_relaying_task():
    server, port = await _engine(EVENTS, break_after=120)
    async with server:
        client, resp, first = await _open(port)
        writer = SlowClient(every=1000)
        try:
            await _pump(resp, first, _Events(_job(), Delivery()), writer)
        except EngineError:
            pass
        else:
            raise AssertionError("the broken stream ended as if complete")
        assert b"".join(writer.out) == b"".join(EVENTS[:120])[:len(b"".join(writer.out))]
        client.close()


async def test_an_error_in_the_read_callback_reaches_the_task():
    server, port = await _engine(EVENTS)
    async with server:
        client, resp, first = await _open(port)
        class Diverging(_Events):
            seen = 0

            def feed(self, chunk: bytes) -> bytes:
                Diverging.seen += 1
                if Diverging.seen == 3:
                    raise EngineError("diverged")
                return super().feed(chunk)

        events = Diverging(_job(), Delivery())
        try:
            await _pump(resp, first, events, SlowClient(every=1000))
        except EngineError as e:
            assert str(e) == "diverged"
        else:
            raise AssertionError("the callback's error was lost")
        client.close()


def test_the_writer_is_found_on_uvicorns_cycle_only():
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    async def plain_send(message):  # a test transport's send
        pass

    assert client_writer(plain_send) is None
    cycle = RequestResponseCycle.__new__(RequestResponseCycle)
    assert client_writer(cycle.send) is not None


def test_a_client_reset_in_the_same_loop_turn_is_not_written_to():
    """uvloop closes a reset client's transport and calls uvicorn's connection_lost one callback
    later; an engine read in between must not write (uvloop raises RuntimeError: the request
    then ended as a gateway error with a traceback, not as the client's disconnect)."""
    from types import SimpleNamespace

    from cluster.gateway.edge.client_writer import ClientWriter

    class Closed:
        def is_closing(self) -> bool:
            return True

        def write(self, data: bytes) -> None:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")

    ClientWriter(SimpleNamespace(disconnected=False, transport=Closed(), flow=SimpleNamespace(write_paused=False))).write(b"data: x\n\n")


async def test_a_client_that_leaves_after_the_epilogue_got_the_whole_answer():
    """The engine broke after the stream's last token: the relay writes the end itself (usage and
    [DONE], StreamLedger.epilogue). A client that leaves then has the whole answer: a 200, not a
    499 (review of the end-of-stream check: the epilogue did not pass through the check)."""
    from cluster.gateway.stream.relay import _relay_stream

    head = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    events = [head + b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null,'
                     b'"prompt_token_ids":[1,2],"token_ids":[]}]}\n\n',
              head + b'"delta":{"content":"a"},"logprobs":null,"finish_reason":null,"token_ids":[5]}]}\n\n',
              head + b'"delta":{"content":"b"},"logprobs":null,"finish_reason":"stop","stop_reason":null,'
                     b'"token_ids":[6]}]}\n\n']
    server, port = await _engine([*events, b""], break_after=len(events))  # no usage, no [DONE]: the connection drops
    async with server:
        client, resp, first = await _open(port)
        gone: asyncio.Future = asyncio.get_running_loop().create_future()
        bodies: list[bytes] = []

        async def send(message: dict) -> None:
            body = message.get("body", b"")
            bodies.append(body)
            if body.endswith(b"data: [DONE]\n\n"):
                gone.set_result(None)  # the client leaves once it has the end

        job = Job(request_id="r", route="/v1/chat/completions", model="m", tenant="t", stream=True, headers={},
                  data={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, body=b"{}", resume=True)
        delivery = Delivery()
        done = await _relay_stream([resp], first, send, out_headers=[], job=job, delivery=delivery, gone=gone,
                                   timed_out=lambda: False, on_broken=lambda: None, resume=None)
        assert not done and b"data: [DONE]" in b"".join(bodies) and b"token_ids" not in b"".join(bodies)
        assert delivery.status == 200
        client.close()
