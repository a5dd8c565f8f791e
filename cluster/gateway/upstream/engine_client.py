"""A minimal keep-alive HTTP/1.1 client for the engine hop, on httptools' C parser (the one
uvicorn uses). It does only what the forwarder needs: POST a JSON body, read the status and
headers, then hand over the (de-chunked) body bytes as they arrive, coalescing whatever is
buffered into one piece. Measured against aiohttp's client on this path (README, `make
bench`): less CPU per request and per chunk. Everything else uses a general client.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

from urllib.parse import urlsplit

import httptools

_HIGH_WATER = 1 << 20  # pause reading the engine when this much is waiting for the client


class EngineError(Exception):
    """The engine connection failed or broke."""


class ConnectFailed(EngineError):
    """No connection could be opened: nothing was sent, another replica may be tried."""


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._head: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._wakeup: asyncio.Future[None] | None = None
        self.complete = False
        self.error: Exception | None = None
        self.paused = False
        self._keep_alive = False
        # Streaming mode (``Response.pump``): each piece of the body goes straight to this
        # callback from the read, instead of waking a reader task.
        self.sink: Callable[[bytes], None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        sink = self.sink  # the message's end (in this read) unsets it; its last piece still goes
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(EngineError(f"bad HTTP from engine: {e}"))
            self.close()
        if sink is not None and self._chunks:
            self._flush(sink)

    def _flush(self, sink: Callable[[bytes], None]) -> None:
        """Streaming mode: the body this read held, to the sink in one piece (several events
        that arrived together leave in one write)."""
        data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks.clear()
        try:
            sink(data)
        except Exception as e:  # noqa: BLE001 - the pumping task raises it
            self.sink = None
            self._fail(e)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.complete:
            self._fail(EngineError(f"engine closed the connection{': ' + str(exc) if exc else ''}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        # Only valid while the message is being parsed (llhttp resets after it).
        self._keep_alive = self._parser.should_keep_alive()
        if self._head and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        if self.sink is not None:
            return  # data_received hands what this read held to the sink at once
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and self.transport and not self.paused:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.sink = None  # a pooled connection never writes to the client of a finished request
        self._wake()

    def _wake(self) -> None:
        if self._wakeup and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _fail(self, err: Exception) -> None:
        if self.error is None:  # the first cause, not the connection loss that follows it
            self.error = err
        if self._head and not self._head.done():
            self._head.set_exception(err)
        self._wake()

    # used by EngineClient
    def send(self, data: bytes) -> None:
        """Write the request. Raises EngineError, nothing sent, when the connection is already
        gone: an engine that dies as it accepts resets the connection between the connect and
        this write (uvloop closes the transport, then calls connection_lost)."""
        self.sink = None
        self._headers = {}
        self._chunks.clear()
        self._buffered = 0
        self.complete = False
        self._keep_alive = False
        transport = self.transport
        if transport is None or transport.is_closing():
            raise EngineError("engine closed the connection before the request was sent")
        self._head = asyncio.get_running_loop().create_future()
        transport.write(data)

    async def head(self) -> tuple[int, dict[str, str]]:
        assert self._head is not None
        await self._head
        return self._parser.get_status_code(), self._headers

    def pause(self) -> None:
        """Stop reading the engine (the client's side is full); ``wait`` returns."""
        if self.transport is not None and not self.paused:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.transport.resume_reading()
        self.paused = False

    async def wait(self) -> None:
        """In streaming mode: until the body is complete, the read failed (raised), or
        reading paused."""
        while not self.complete:
            if self.error:
                raise self.error
            if self.paused:
                return
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup
        if self.error:
            raise self.error

    async def body(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        while True:
            if self._chunks:
                data = b"".join(self._chunks)
                self._chunks.clear()
                self._buffered = 0
                if self.paused and self.transport:
                    self.transport.resume_reading()
                    self.paused = False
                yield data
                continue
            if self.complete:
                return
            if self.error:
                raise self.error
            self._wakeup = loop.create_future()
            await self._wakeup

    @property
    def reusable(self) -> bool:
        return self.complete and self.transport is not None and self._keep_alive and self.error is None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class Response:
    def __init__(self, conn: _Conn, pool: EngineClient, key: tuple[str, int], status: int, headers: dict[str, str]):
        self._conn = conn
        self._pool = pool
        self._key = key
        self.status = status
        self.headers = headers
        self._done = False

    def chunks(self) -> AsyncIterator[bytes]:
        return self._conn.body()

    def pump(self, sink: Callable[[bytes], None]) -> _Conn:
        """Hand every further piece of the body to ``sink`` as it is read (what was read
        already first); the connection is what the caller waits on (``_Conn.wait``)."""
        conn = self._conn
        conn._buffered = 0  # a read paused for that much (async mode) stays paused: ``wait`` returns at once
        if conn._chunks:  # read after the first bytes, before the pump started
            conn._flush(sink)
            if conn.error is not None:
                raise conn.error
        if not conn.complete:
            conn.sink = sink
        return conn

    def pause(self) -> None:
        self._conn.pause()

    @property
    def complete(self) -> bool:
        """The whole body has been read and handed over (none of it still buffered)."""
        return self._conn.complete and not self._conn._chunks

    async def read(self) -> bytes:
        return b"".join([c async for c in self._conn.body()])

    def release(self) -> None:
        """Back to the pool if the response was read to its end, else closed."""
        if self._done:
            return
        self._done = True
        if self._conn.reusable:
            # Paused by a slow client at the stream's last read: a pooled connection reads again
            # (its next answer, or the engine closing it).
            self._conn.resume()
            self._pool._idle.setdefault(self._key, []).append(self._conn)
        else:
            self._conn.close()

    def close(self) -> None:
        """Drop the connection (the engine aborts an unfinished request)."""
        if not self._done:
            self._done = True
            self._conn.close()


def engine_headers(key: str | None) -> dict[str, str]:
    """What every gateway -> engine call carries: the engine credential (the engines answer
    nothing else but /health and /metrics without it). The one place it is put on a request:
    the generation client below and the stats poller both take it from here."""
    return {"Authorization": f"Bearer {key}"} if key else {}


class EngineClient:
    """Keep-alive connections per engine (host, port)."""

    def __init__(self, *, connect_timeout_s: float, key: str | None = None):
        self._connect_timeout_s = connect_timeout_s
        self._auth_lines = [f"{k}: {v}" for k, v in engine_headers(key).items()]
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._addresses: dict[str, tuple[str, int]] = {}

    def address(self, url: str) -> tuple[str, int]:
        """(host, port) of an engine base URL, parsed once."""
        addr = self._addresses.get(url)
        if addr is None:
            parts = urlsplit(url)
            addr = self._addresses[url] = (parts.hostname or "127.0.0.1", parts.port or 80)
        return addr

    async def _acquire(self, key: tuple[str, int]) -> tuple[_Conn, bool]:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn, True
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(_Conn, key[0], key[1]), self._connect_timeout_s)
        except (OSError, asyncio.TimeoutError) as e:
            raise ConnectFailed(f"cannot connect to engine {key[0]}:{key[1]}: {e or type(e).__name__}") from None
        return conn, False

    async def post(self, host: str, port: int, path: str, body: bytes, headers: dict[str, str], *,
                   method: str = "POST") -> Response:
        key = (host, port)
        head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}", *self._auth_lines]
        head += [f"{k}: {v}" for k, v in headers.items()]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        broken: EngineError | None = None
        while True:
            try:
                conn, reused = await self._acquire(key)
            except ConnectFailed as e:
                if broken is None:
                    raise
                # The pooled connection broke with the request sent, and the engine now refuses
                # new ones: it went away, maybe while running the request. Lost, not refused.
                raise EngineError(f"{broken}; then {e}") from None
            try:
                conn.send(data)
            except EngineError as e:
                conn.close()
                if reused:  # closed as it was taken from the pool: nothing sent, a fresh one
                    continue
                # Reset as it was opened (the engine dying): nothing sent, like a refusal, unless
                # a pooled connection broke with the request sent before (then it was lost).
                if broken is None:
                    raise ConnectFailed(f"engine {key[0]}:{key[1]}: {e}") from None
                raise EngineError(f"{broken}; then {e}") from None
            try:
                status, hdrs = await conn.head()
            except EngineError as e:
                conn.close()
                # A pooled connection the engine closed while idle (keep-alive timeout):
                # the request never reached it, so send it again on a fresh connection.
                if reused:
                    broken = e
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return Response(conn, self, key, status, hdrs)

    def close(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()
