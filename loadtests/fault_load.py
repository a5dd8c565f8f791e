"""Steady load for the fault suite (tests/faults), and its record in
`loadtests/results/faults.json`.

Every request is classified the way a client sees it:
- ``succeeded``: a whole answer (a JSON 200, or a stream that ends with ``[DONE]`` and no error event);
- ``failed``: a retryable error before the first byte (408, 429 or 5xx, in the OpenAI shape);
- ``lost``: anything else: a cut stream (an error event or a broken connection after the
  first byte), a reset new connection, a hang, a non-retryable status.
A connection that fails before any response byte is retried once on a new connection, as
the OpenAI SDK does (``retried``); it is lost only if the retry fails too.

One record per scenario: ``{name, sent, succeeded, failed, resumed, lost, recovery_s,
ttft_p99_before, ttft_p99_during, ttft_p99_after}`` (TTFT of the requests started before the
fault, between the fault and recovery, and after), plus the scenario's own ``detail``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

OUT = Path("loadtests/results/faults.json")
RETRYABLE = {408, 429, 500, 502, 503, 504}
FIELDS = ("name", "sent", "succeeded", "failed", "resumed", "lost", "recovery_s",
          "ttft_p99_before", "ttft_p99_during", "ttft_p99_after")


@dataclass
class Outcome:
    started: float  # monotonic
    kind: str  # succeeded | failed | lost
    ttft_s: float | None = None
    text: str = ""
    detail: str = ""
    retried: bool = False
    ended: float = 0.0  # monotonic
    stream: bool = False


@dataclass
class Load:
    """Requests against one gateway URL (or several, in turn), each outcome kept."""

    urls: list[str]
    model: str = "m"
    headers: dict[str, str] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    _turn: int = 0

    def _url(self) -> str:
        self._turn += 1
        return self.urls[self._turn % len(self.urls)]

    def body(self, max_tokens: int, stream: bool, messages: list[dict] | None = None, **extra) -> dict:
        return {"model": self.model, "messages": messages or [{"role": "user", "content": "Tell me a long story."}],
                "max_tokens": max_tokens, "stream": stream, "temperature": 0, **extra}

    async def request(self, client: httpx.AsyncClient, body: dict) -> Outcome:
        """One request, classified (and kept)."""
        started = time.monotonic()
        out = None
        for attempt in (0, 1):
            try:
                out = await (self._stream if body.get("stream") else self._whole)(client, body, started)
                break
            except _BeforeFirstByte as e:
                if attempt == 0:  # the client library's one retry, on a new connection
                    client = httpx.AsyncClient(timeout=client.timeout)
                    continue
                out = Outcome(started, "lost", detail=f"connection failed twice before any byte: {e}")
        assert out is not None
        out.retried = attempt == 1
        out.stream = bool(body.get("stream"))
        out.ended = time.monotonic()
        if attempt == 1:
            await client.aclose()
        self.outcomes.append(out)
        return out

    async def _whole(self, client: httpx.AsyncClient, body: dict, started: float) -> Outcome:
        try:
            r = await client.post(self._url() + "/v1/chat/completions", json=body, headers=self.headers)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as e:
            raise _BeforeFirstByte(repr(e)) from None
        except httpx.HTTPError as e:
            return Outcome(started, "lost", detail=repr(e))
        if r.status_code == 200:
            return Outcome(started, "succeeded", ttft_s=time.monotonic() - started,
                           text=r.json()["choices"][0]["message"]["content"] or "")
        return _refused(started, r.status_code, r.text)

    async def _stream(self, client: httpx.AsyncClient, body: dict, started: float) -> Outcome:
        ttft, parts, got = None, [], False
        try:
            async with client.stream("POST", self._url() + "/v1/chat/completions", json=body,
                                     headers=self.headers) as r:
                got = True
                if r.status_code != 200:
                    return _refused(started, r.status_code, (await r.aread()).decode(errors="replace"))
                done, error, buf = False, "", b""
                # SSE events split on blank lines (not str.splitlines: model text may hold
                # U+2028 or NEL, which JSON leaves unescaped)
                async for chunk in r.aiter_bytes():
                    buf += chunk
                    *events, buf = buf.split(b"\n\n")
                    for raw in events:
                        if not raw.startswith(b"data: "):
                            continue
                        data = raw[6:]
                        if data == b"[DONE]":
                            done = True
                            continue
                        event = json.loads(data)
                        if "error" in event:
                            error = event["error"].get("code") or "error"
                            continue
                        for c in event.get("choices") or ():
                            piece = (c.get("delta") or {}).get("content") or ""
                            if piece and ttft is None:
                                ttft = time.monotonic() - started
                            parts.append(piece)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as e:
            if not got:
                raise _BeforeFirstByte(repr(e)) from None
            return Outcome(started, "lost", ttft, "".join(parts), detail=f"cut: {e!r}")
        except httpx.HTTPError as e:
            return Outcome(started, "lost", ttft, "".join(parts), detail=f"cut: {e!r}")
        if done and not error:
            return Outcome(started, "succeeded", ttft, "".join(parts))
        return Outcome(started, "lost", ttft, "".join(parts), detail=f"cut: {error or 'no [DONE]'}")

    async def loop(self, client: httpx.AsyncClient, stop: asyncio.Event, make_body, pause_s: float = 0.0) -> None:
        """A closed loop: one request after another until ``stop``."""
        while not stop.is_set():
            await self.request(client, make_body())
            if pause_s:
                await asyncio.sleep(pause_s)

    def in_flight_at(self, t: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.started <= t < o.ended]

    def record(self, name: str, *, fault_at: float, recovered_at: float | None, resumed: int = 0,
               **detail: Any) -> dict:
        """The scenario's record (``fault_at``/``recovered_at``: monotonic times)."""
        outs = self.outcomes
        count = {k: sum(o.kind == k for o in outs) for k in ("succeeded", "failed", "lost")}
        end = recovered_at if recovered_at is not None else float("inf")

        def p99(sel) -> float | None:
            xs = sorted(o.ttft_s for o in outs if o.ttft_s is not None and sel(o.started))
            return round(xs[min(len(xs) - 1, int(0.99 * len(xs)))], 3) if xs else None

        return {"name": name, "sent": len(outs), **count, "resumed": resumed,
                "recovery_s": None if recovered_at is None else round(recovered_at - fault_at, 1),
                "ttft_p99_before": p99(lambda t: t < fault_at), "ttft_p99_during": p99(lambda t: fault_at <= t < end),
                "ttft_p99_after": p99(lambda t: t >= end),
                "detail": {"retried": sum(o.retried for o in outs),
                           "lost_examples": [o.detail for o in outs if o.kind == "lost"][:5],
                           "failed_examples": [o.detail for o in outs if o.kind == "failed"][:5], **detail}}


class _BeforeFirstByte(Exception):
    pass


def _refused(started: float, status: int, text: str) -> Outcome:
    kind = "failed" if status in RETRYABLE and '"error"' in text else "lost"
    return Outcome(started, kind, detail=f"status {status}: {text[:160]}")


def write(record: dict, path: Path | None = None) -> Path:
    """Merge one scenario's record into the faults file (``OWC_FAULTS_OUT``, else the
    committed one only when given explicitly)."""
    path = path or Path(os.environ.get("OWC_FAULTS_OUT") or OUT)
    doc = json.loads(path.read_text()) if path.exists() else {"scenarios": []}
    doc["scenarios"] = [r for r in doc["scenarios"] if r["name"] != record["name"]] + [record]
    doc["host_cpus"] = os.cpu_count()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


async def wait_until(pred, timeout_s: float, what=lambda: "", period_s: float = 0.2):
    """``pred()`` (run in a thread) until truthy; its value."""
    deadline = time.monotonic() + timeout_s
    while not (got := await asyncio.to_thread(pred)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what()}")
        await asyncio.sleep(period_s)
    return got
