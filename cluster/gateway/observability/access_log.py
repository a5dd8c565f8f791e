"""Structured access log: one JSON line per finished request. The prompt is never logged
unless `gateway.access_log.include_prompts` is set (prompts may hold personal data).

Lines are serialised on the event loop (cheap) and written by a thread of their own, so a
slow disk or a full pipe never stalls the request path; the writer flushes whenever its
queue runs empty. The loop hands lines to the thread in batches, at most ``HANDOFF_S``
after the first of them (waking the thread for every request cost the event loop more than
the line itself: issue 34's profile)."""

from __future__ import annotations

import asyncio
import math
import queue
import sys
import threading
import time
from datetime import datetime, timezone
from typing import IO, Any

import orjson

from cluster.config.schema import AccessLog as AccessLogConfig

HANDOFF_S = 0.05  # a line reaches the writer thread at most this long after it was written
HANDOFF_LINES = 256  # or once this many wait


class AccessLog:
    def __init__(self, cfg: AccessLogConfig, *, stream: IO[bytes] | None = None, clock=time.time):
        self.include_prompts = cfg.include_prompts
        self._clock = clock
        if stream is not None:
            self._out = stream
        elif cfg.path:
            self._out = open(cfg.path, "ab")  # noqa: SIM115 - lives as long as the process
        else:
            self._out = sys.stdout.buffer
        self._queue: queue.SimpleQueue[bytes | threading.Event | None] = queue.SimpleQueue()
        self._pending: list[bytes] = []
        self._second, self._prefix = -1, ""
        self._lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_lines, name="access-log", daemon=True)
        self._writer.start()

    def write(self, record: dict[str, Any]) -> None:
        # As datetime's isoformat(timespec="milliseconds") of the clock (its fraction rounded to
        # microseconds as datetime.fromtimestamp rounds it, then cut to milliseconds), its date and
        # time formatted once a second. One writer: the event loop.
        fraction, whole = math.modf(self._clock())
        second, micros = int(whole), round(fraction * 1_000_000)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        ts = f"{self._prefix}.{micros // 1000:03d}+00:00"
        line = orjson.dumps({"ts": ts, **record}, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            self._pending.append(line)
            waiting = len(self._pending)
        if waiting == 1:
            try:
                asyncio.get_running_loop().call_later(HANDOFF_S, self._handoff)
            except RuntimeError:  # no event loop (a caller outside the gateway's): at once
                self._handoff()
        elif waiting >= HANDOFF_LINES:
            self._handoff()

    def _handoff(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            self._queue.put(b"".join(pending))

    def flush(self, timeout_s: float = 5.0) -> None:
        """Until every line written so far is out."""
        self._handoff()
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout_s)

    def close(self) -> None:
        self._handoff()
        self._queue.put(None)
        self._writer.join(timeout=5)

    def _write_lines(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._flush()
                return
            if isinstance(item, threading.Event):
                self._flush()
                item.set()
                continue
            try:
                self._out.write(item)
            except (OSError, ValueError):  # a closed or full log must not fail the request
                pass
            if self._queue.empty():
                self._flush()

    def _flush(self) -> None:
        try:
            self._out.flush()
        except (OSError, ValueError):
            pass


def prompt_of(data: dict[str, Any]) -> Any:
    """The part of a request body that is the user's text."""
    if "messages" in data:
        return data["messages"]
    return data.get("prompt")
