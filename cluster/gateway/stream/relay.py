"""The engine's answer, passed to the client: a whole JSON response, or its SSE stream
relayed unparsed as it is read (several events ready at once travel as one chunk), with
the usage, TTFT and inter-token gaps read on the way. No framework layer sits between the
engine read and the client write."""

from __future__ import annotations

import logging

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson

from cluster.gateway.context import CLIENT_CLOSED, Delivery, Job, Send
from cluster.gateway.edge.client_writer import ClientWriter
from cluster.gateway.upstream.engine_client import EngineError, Response
from cluster.gateway.errors import OpenAIError, from_upstream, sse_error_event
from cluster.gateway.anthropic.errors import error_event, message_of
from cluster.gateway.context import COUNT_TOKENS, MESSAGES, RESPONSES
from cluster.gateway.stream.messages import MessagesStream, strip_thinking_body
from cluster.gateway.stream.reasoning import StreamStrip, strip_body
from cluster.gateway.stream.resume import StreamLedger, ledger_for
from cluster.gateway.stream.splice import Diverged
from cluster.gateway.stream.final_events import SEQUENCE, responses_error_event, take_response_usage, take_usage
from cluster.gateway.stream.terminal import terminal_named

log = logging.getLogger(__name__)

# Continues a broken stream on another replica: the continuation's response and first bytes.
Resume = Callable[[StreamLedger], Awaitable[tuple[Response, bytes]]]


async def respond(
    resp: Response, first: bytes, send: Send, *, job: Job, delivery: Delivery, gone: asyncio.Future,
    timed_out: Callable[[], bool], on_broken: Callable[[], None], resume: Resume | None = None,
    writer: ClientWriter | None = None,
) -> None:
    """Send the engine's response (``first``: its first body bytes, already read). Raises
    OpenAIError for an engine error status, before anything was sent. ``resume``: how a
    resumable stream (``job.resume``) whose engine breaks is continued elsewhere; ``writer``:
    the client's connection, which a stream's events are written to from the engine read."""
    current = [resp]  # the engine response being relayed (a continuation's, once resumed)
    # The client left: the engine's request is aborted (its connection closed), unless it is over.
    gone.add_done_callback(lambda t: None if t.cancelled() or current[0].complete else current[0].close())
    completed = False
    try:
        if resp.status in (401, 403):
            # The gateway never forwards a client's credential: an engine that refuses is
            # refusing the engine key (a mismatch of deployments), not the tenant.
            completed = True
            on_broken()
            raise OpenAIError(502, "the engine refused the gateway's engine credential", code="engine_auth_failed")
        if resp.status >= 400:
            completed = True
            if job.route in (MESSAGES, COUNT_TOKENS):  # Anthropic's clients get the engine's own status
                raise OpenAIError(resp.status, message_of(first) or f"engine returned HTTP {resp.status}")
            raise from_upstream(resp.status, first)
        out_headers = [(b"x-request-id", job.request_id.encode())]
        if job.stream:
            completed = await _relay_stream(current, first, send, out_headers=out_headers, job=job, delivery=delivery,
                                            gone=gone, timed_out=timed_out, on_broken=on_broken, resume=resume,
                                            writer=writer)
        else:
            completed = True
            try:
                delivery.usage(orjson.loads(first).get("usage"))
            except (orjson.JSONDecodeError, AttributeError):
                pass
            if job.strip_reasoning:  # the usage above still counts the reasoning tokens
                first = strip_thinking_body(first) if job.route == MESSAGES else strip_body(job.route, first)
            if job.rename:  # an adapter candidate's answer names the adapter asked for
                first = renamed(first, job.rename)
            ctype = resp.headers.get("content-type", "application/json").encode()
            delivery.status = resp.status
            if writer is not None:
                writer.hold()  # the head leaves with the body: one write (ClientWriter.hold)
            try:
                await send({"type": "http.response.start", "status": resp.status, "headers": [
                    (b"content-type", ctype), (b"content-length", str(len(first)).encode()), *out_headers]})
                await send({"type": "http.response.body", "body": first, "more_body": False})
            finally:
                if writer is not None:
                    writer.release()
    finally:
        # A finished response hands its connection back to the pool (keep-alive); an
        # unfinished one drops it, so that the engine aborts the request.
        if (completed and not gone.done()) or current[0].complete:  # a client that left after the end: pooled too
            current[0].release()
        else:
            current[0].close()


class _Events:
    """One stream on its way to the client: whole SSE events only (a partial event waits
    for the rest: clients cannot use half an event anyway, and usage events must be read and
    stripped whole), the resume ledger, the usage, TTFT and inter-token gaps, the strips."""

    __slots__ = ("delivery", "tail", "last", "responses", "messages", "strip", "ledger", "strip_usage", "rename", "sent",
                 "final", "finished")

    def __init__(self, job: Job, delivery: Delivery):
        self.delivery = delivery
        self.tail = b""
        self.last = 0.0
        self.responses = job.route == RESPONSES
        # Anthropic's Messages stream: its usage, thinking strip and error events (cluster.gateway.stream.messages).
        self.messages = MessagesStream(strip_thinking=job.strip_reasoning) if job.route == MESSAGES else None
        self.strip = StreamStrip(job.route) if job.strip_reasoning and self.messages is None else None  # whole events only
        self.ledger = ledger_for(job) if job.resume else None
        self.strip_usage = job.strip_usage
        self.rename = job.rename
        self.sent = b""  # a Responses stream's last events relayed: an error event numbers itself after them
        self.finished = False  # the stream's last event passed: a client that leaves then got the whole answer (not a 499)

    def feed(self, chunk: bytes) -> bytes:
        """What of the engine's ``chunk`` goes to the client now (b"": nothing yet)."""
        if self.tail:
            chunk, self.tail = self.tail + chunk, b""
        if not chunk.endswith(b"\n\n"):
            cut = chunk.rfind(b"\n\n") + 2
            if cut == 1:
                self.tail = chunk
                return b""
            chunk, self.tail = chunk[:cut], chunk[cut:]
        if self.ledger is not None:
            chunk = self.ledger.take(chunk)
            if not chunk:  # events only the ledger needed (a harmony header token's ids)
                return b""
        now = _clock()
        delivery = self.delivery
        if self.messages is not None:
            chunk, tokens = self.messages.chunk(chunk, delivery)
            finished = b"event: message_stop" in chunk
        elif self.responses:
            # Named events, no [DONE]: the token events are the deltas (text, reasoning,
            # tool arguments); the usage is in the final response event, relayed as is.
            tokens = b".delta\n" in chunk
            if (final := take_response_usage(chunk, delivery)) is not None:
                chunk = terminal_named(chunk, final)
            if SEQUENCE in chunk:
                self.sent = chunk
            finished = b"event: response.completed" in chunk or b"event: response.incomplete" in chunk
        elif b'"choices":[]' in chunk:
            # A fast engine's whole answer may arrive in one read with its usage.
            chunk, tokens = take_usage(chunk, delivery, strip=self.strip_usage)
            finished = chunk.endswith(_DONE)
        else:
            tokens = not chunk.startswith(_DONE)  # whole events only: [DONE] is one
            finished = not tokens or chunk.endswith(_DONE)  # [DONE] is the stream's last event
        if tokens:
            if delivery.ttft_s is None:
                delivery.ttft_s = now - delivery.started
            else:
                delivery.itl.append(now - self.last)
            self.last = now
        if self.strip is not None:
            chunk = self.strip.chunk(chunk)
        if finished:
            self.finished = True
        return renamed(chunk, self.rename) if self.rename else chunk

    def broke(self) -> None:
        """Raise when the ledger read the engine's own error event: the stream broke there,
        as if its connection had (what came before it has been relayed)."""
        if self.ledger is not None and self.ledger.failed is not None:
            raise EngineError(f"the engine reported an error mid-stream: {self.ledger.failed}")

    def rest(self) -> bytes:
        """The stream's unfinished last event, at its end."""
        tail, self.tail = self.tail, b""
        if tail and self.strip is not None:
            tail = self.strip.chunk(tail)
        return renamed(tail, self.rename) if self.rename else tail


def renamed(data: bytes, pairs: tuple[tuple[bytes, bytes], ...]) -> bytes:
    """``data`` (whole events or a whole body) with each pair's engine bytes replaced (Job.rename)."""
    for engine, client in pairs:
        data = data.replace(engine, client)
    return data


async def _pump(resp: Response, first: bytes, events: _Events, writer: ClientWriter) -> None:
    """Relay the rest of ``resp``'s stream from its read callback straight to the client's
    connection (cluster.gateway.edge.client_writer): no task wakes per event. Returns when
    the engine finished; raises what broke the read (EngineError, a Diverged continuation)."""
    ledger, feed = events.ledger, events.feed

    def sink(chunk: bytes) -> None:  # every read of the engine's stream: the token path
        out = feed(chunk)
        if out:
            # The stream's last event with the engine's end in this read: the client's end goes with it.
            last = events.finished and resp.complete and not events.tail and (ledger is None or ledger.failed is None)
            if writer.write(out, last=last):  # the client reads slower than the engine writes
                resp.pause()
        if ledger is not None and ledger.failed is not None:
            events.broke()

    try:
        sink(first)
    finally:
        writer.release()  # the response head, when the first bytes held no whole event
    conn = resp.pump(sink)
    while True:
        await conn.wait()
        if conn.complete:
            return
        await writer.drain()
        conn.resume()


async def _relay_stream(
    current: list[Response], first: bytes, send: Send, *, out_headers: list, job: Job, delivery: Delivery,
    gone: asyncio.Future, timed_out: Callable[[], bool], on_broken: Callable[[], None], resume: Resume | None,
    writer: ClientWriter | None = None,
) -> bool:
    """Relay the SSE stream; True when the engine (or the replica that resumed it) finished it.
    ``writer``: the client's connection, written from the engine read (else each event is sent)."""
    if writer is not None:
        writer.hold()  # the head leaves with the first events (ClientWriter.hold; _pump releases it)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"), *out_headers,
        ]})
    finally:
        pumped = writer is not None and writer.usable
        if writer is not None and not pumped:
            writer.release()
    delivery.status = 200
    events = _Events(job, delivery)
    ledger, messages, responses = events.ledger, events.messages, events.responses
    while True:
        try:
            if pumped:
                await _pump(current[0], first, events, writer)
            else:
                async for chunk in _then(first, current[0].chunks()):
                    out = events.feed(chunk)
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                    events.broke()
            break
        except EngineError as e:
            if pumped and writer.ended:  # the client has the whole answer, its end included: nothing may follow
                break
            if gone.done():  # we closed it because the client went away (after the last event: answered)
                delivery.status = 200 if events.finished else CLIENT_CLOSED
                return False
            # Headers are gone already: end the stream with an SSE error event, not a hang.
            if timed_out():
                err = OpenAIError(504, "engine did not finish in time", code="engine_timeout")
            else:
                log.warning("request %s: the engine's stream broke: %s", job.request_id, e)  # its address: not for the client
                err = OpenAIError(502, "the engine's stream broke", code="engine_stream_broken")
                if not isinstance(e, Diverged):  # a continuation that wrote other text: its replica is fine
                    on_broken()
                if ledger is not None and ledger.finish_reason is not None:
                    # Broken after its last token: the client misses only the end.
                    end = renamed(ledger.epilogue(include_usage=True), job.rename)  # its meta: the engine's names
                    if end.startswith(b"data: {"):
                        end, _ = take_usage(end, delivery, strip=job.strip_usage)
                    await send({"type": "http.response.body", "body": end, "more_body": True})
                    events.finished = events.finished or end.endswith(_DONE)  # the client has the whole answer
                    events.tail = b""  # the broken connection's unfinished event: the epilogue replaces it
                    break
                if ledger is not None and resume is not None and ledger.resumable:
                    current[0].close()  # an engine that reported its failure in-band still has it open
                    try:
                        resp, first = await resume(ledger)
                    except OpenAIError as refused:
                        log.warning("request %s: the stream could not be resumed: %s", job.request_id, refused.message)
                    else:
                        current[0] = resp
                        if gone.done():  # the client left while the continuation opened
                            delivery.status = CLIENT_CLOSED
                            return False
                        ledger.resumed()
                        delivery.resumes += 1
                        events.tail = b""
                        continue
            delivery.status = err.status
            event = error_event(err.status, err.message) if messages is not None else \
                responses_error_event(err, after=events.sent) if responses else sse_error_event(err)
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return False
    tail = events.rest()
    if tail and not (pumped and writer.ended):
        await send({"type": "http.response.body", "body": tail, "more_body": True})
    if gone.done():
        delivery.status = 200 if events.finished else CLIENT_CLOSED
        return False
    if pumped:
        await writer.end(send)  # its terminator maybe written with the last event
    else:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    return True


async def _then(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk


_DONE = b"data: [DONE]\n\n"
_clock = time.perf_counter
