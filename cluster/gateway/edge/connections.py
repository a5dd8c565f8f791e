"""What a connection may hold before it has sent a request, per gateway process: deadlines
for the headers and the body (slower is 408, the connection closed), a bound on the request
line plus headers (431), an idle keep-alive bound, and a bound on live connections below
the process's open-file limit. At that bound the oldest idle connection (awaiting its
headers, or idle between requests) is closed to make room; only when every connection has
a request in flight is the new one refused (503 with Retry-After) — the excess is refused,
never everyone, and a slowloris crowd cannot hold the door shut.

uvicorn's httptools protocol does the HTTP; this subclass adds the bounds around its
parser callbacks. ``ConnectionGuard`` is the per-process table (no sockets: tested alone)."""

from __future__ import annotations

import functools
import logging
import resource
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cluster.config.schema import Limits
from cluster.gateway.errors import RETRY_SOON, OpenAIError

log = logging.getLogger(__name__)

# Open files a gateway process keeps for itself (listeners, logs, Prometheus, imports).
FD_RESERVE = 256
# Seconds a refused or timed-out connection lingers (our side shut) before it is closed.
LINGER_S = 0.5
# Where the app learns that the connection layer ended the request (body deadline).
CLOSED_KEY = "owc.closed"
# A future the app may leave here (cluster.gateway.edge.client_writer.ClientWriter.lost): resolved
# when the client's connection is lost (no task per request waiting on uvicorn's receive).
GONE_KEY = "owc.gone"


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_bound(configured: int | None, open_files: int) -> int:
    """Client connections one process may hold: each request also holds an engine
    connection, so half the open-file limit less a reserve; a configured bound above that
    is lowered to it (the process would otherwise fail everyone at the limit)."""
    ceiling = max(1, (open_files - FD_RESERVE) // 2)
    if configured is None:
        return ceiling
    if configured > ceiling:
        log.warning("gateway.limits.max_connections %d is above what %d open files allow; using %d",
                    configured, open_files, ceiling)
    return min(configured, ceiling)


UPLOAD_PATH = b"/v1/files"  # the Files API's upload (multipart, batch.max_file_bytes)

@dataclass(frozen=True)
class Bounds:
    header_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: float
    max_header_bytes: int
    max_connections: int
    upload_timeout_s: float = 900.0  # a file upload's body (POST /v1/files: up to batch.max_file_bytes)

    @classmethod
    def from_limits(cls, limits: Limits, open_files: int) -> Bounds:
        return cls(limits.header_timeout_s, limits.body_timeout_s, limits.keepalive_timeout_s,
                   limits.max_header_bytes, connection_bound(limits.max_connections, open_files),
                   limits.upload_timeout_s)

    def body_s(self, method: bytes, url: bytes) -> float:
        """The deadline of a request's body: a file upload's own, else body_timeout_s."""
        return self.upload_timeout_s if method == b"POST" and url.split(b"?", 1)[0] == UPLOAD_PATH \
            else self.body_timeout_s


class ConnectionGuard:
    """The live connections of one process, the idle ones in the order they became idle.
    ``on_close(reason)`` observes every connection the bounds close or refuse."""

    def __init__(self, bounds: Bounds, *, on_close: Callable[[str], None] | None = None):
        self.bounds = bounds
        self.on_close = on_close or (lambda reason: None)
        self._live: set[Any] = set()
        self._idle: OrderedDict[Any, None] = OrderedDict()

    @property
    def live(self) -> int:
        return len(self._live)

    def admit(self, conn: Any) -> bool:
        """Take a new connection (idle until its headers are in): at the bound, close the
        oldest idle one for it; False when every live connection is busy."""
        if len(self._live) >= self.bounds.max_connections:
            if not self._idle:
                self.on_close("over_capacity")
                return False
            victim, _ = self._idle.popitem(last=False)
            self._live.discard(victim)
            self.on_close("evicted")
            victim.evict()
        self._live.add(conn)
        self._idle[conn] = None
        return True

    def busy(self, conn: Any) -> None:
        self._idle.pop(conn, None)

    def idle(self, conn: Any) -> None:
        if conn in self._live:
            self._idle[conn] = None
            self._idle.move_to_end(conn)

    def forget(self, conn: Any) -> None:
        self._live.discard(conn)
        self._idle.pop(conn, None)


def _raw_response(status: int, reason: bytes, err: OpenAIError) -> bytes:
    body = orjson.dumps(err.body())
    head = [b"HTTP/1.1 %d %s" % (status, reason), b"content-type: application/json",
            b"content-length: %d" % len(body), b"connection: close"]
    head += [f"{k.lower()}: {v}".encode() for k, v in err.headers.items()]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol within ``guard``'s bounds. Phases: ``headers`` (from
    the connection or a request's first byte until its headers are in; the header deadline
    and size bound apply), ``body`` (until the request is fully read; the body deadline),
    ``done`` (request read; an idle connection between requests has uvicorn's keep-alive)."""

    draining = False  # the server is stopping: every request from now on is the connection's last

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._guard = guard
        self._phase = "headers"
        self._header_bytes = 0
        self._timer: Any = None
        self._body_s = guard.bounds.body_timeout_s  # this request's body deadline (Bounds.body_s)
        self._refused = False

    # -- connection ---------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self._guard.admit(self):
            self._refused = True
            err = OpenAIError(503, "the gateway holds all the connections it may; retry shortly",
                              code="too_many_connections", headers=RETRY_SOON)
            transport.write(_raw_response(503, b"Service Unavailable", err))
            self._close_soon()
            return
        self._arm(self._guard.bounds.header_timeout_s, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._guard.forget(self)
        super().connection_lost(exc)
        cycle = self.cycle
        gone = cycle.scope.pop(GONE_KEY, None) if cycle is not None else None  # type: ignore[misc]
        if gone is not None and not gone.done():
            gone.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._refused or self._phase == "refused":
            return
        super().data_received(data)
        if self._phase == "headers" and not self.transport.is_closing():
            self._header_bytes += len(data)  # unfinished headers: every byte so far is theirs
            if self._header_bytes > self._guard.bounds.max_header_bytes:
                self._too_large()

    def _too_large(self) -> None:
        self._phase = "refused"  # the parser's remaining callbacks for this request are ignored
        limit = self._guard.bounds.max_header_bytes
        self._end("header_too_large", 431, b"Request Header Fields Too Large", OpenAIError(
            431, f"request line and headers exceed {limit} bytes", code="request_header_too_large"))

    def evict(self) -> None:
        """Closed to make room for a new connection (this one was idle the longest)."""
        self._disarm()
        if not self.transport.is_closing():
            self.transport.close()

    # -- parser callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._phase == "refused":
            return
        super().on_message_begin()
        self._phase, self._header_bytes = "headers", 0
        if self._timer is None:  # a fresh connection's deadline runs from the connection
            self._arm(self._guard.bounds.header_timeout_s, "header_timeout")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._phase != "refused":
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._phase == "refused":
            return
        # Headers that arrived whole in one read: their size, counted as parsed.
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self._guard.bounds.max_header_bytes:
            self._too_large()
            return
        super().on_headers_complete()
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with Connection: close
        self._phase = "body"
        self._guard.busy(self)  # a request the app serves: not idle (not evictable) until it is answered
        self._body_s = self._guard.bounds.body_s(self.parser.get_method(), self.url)
        self._arm(self._body_s, "body_timeout")

    def on_body(self, body: bytes) -> None:
        if self._phase != "refused":
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._phase == "refused":
            return
        super().on_message_complete()
        self._phase = "done"
        self._disarm()
        if self.cycle is not None and self.cycle.response_complete:  # answered before its body was read
            self._guard.idle(self)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts a request the client sent before this answer was complete
        cycle = self.cycle
        if self._phase == "done" and not self.transport.is_closing() and (cycle is None or cycle.response_complete):
            self._guard.idle(self)  # not while that next request is served: the connection would be evictable

    # -- deadlines ----------------------------------------------------------------------
    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired, reason)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, reason: str) -> None:
        self._timer = None
        what = "headers" if reason == "header_timeout" else "body"
        seconds = self._guard.bounds.header_timeout_s if what == "headers" else self._body_s
        self._end(reason, 408, b"Request Timeout", OpenAIError(
            408, f"the request's {what} did not arrive within {seconds:g} s", code="request_timeout"))

    def _end(self, reason: str, status: int, phrase: bytes, err: OpenAIError) -> None:
        """Answer ``status`` (unless a response has begun) and close the connection."""
        self._disarm()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        reading = cycle is not None and self._phase == "body"  # the app has this request (its body is late)
        if reading:
            cycle.scope[CLOSED_KEY] = reason  # type: ignore[index]
        if not (reading and cycle.response_started):  # never a second answer on top of the app's
            self.transport.write(_raw_response(status, phrase, err))
        self._guard.on_close(reason)
        self._phase = "refused"
        self._close_soon()

    def _close_soon(self) -> None:
        """Send our side's FIN after the answer and close a moment later: closing at once
        with the client's bytes unread would reset the connection, and the client could lose
        the answer. Whatever else arrives meanwhile is ignored; the slot is free at once."""
        self._guard.forget(self)
        try:
            if self.transport.can_write_eof():
                self.transport.write_eof()
        except (OSError, RuntimeError):
            pass
        self.loop.call_later(LINGER_S, self.transport.close)


def protocol_factory(guard: ConnectionGuard) -> Callable[..., GuardedProtocol]:
    """What uvicorn's ``http=`` takes: builds each connection's protocol."""
    return functools.partial(GuardedProtocol, guard=guard)
