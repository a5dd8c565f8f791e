"""The clients of loadtests.fairness: tenant A's streamed Poisson arrivals (time to the first
text chunk), tenant B's flood from its own process (``python -m loadtests.fairness_load
URLS KEY MODEL RATE SECONDS MAX_TOKENS SEED OUT``), closed loops and the engine's drain."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
import time
from pathlib import Path

import aiohttp

from cluster.bench.driver import SSEParser, percentile

KEYS = {"A": "sk-fair-tenant-a", "B": "sk-fair-tenant-b"}
PROMPT = "Summarise the quarterly report in three bullet points."


def body(model: str, max_tokens: int, *, stream: bool, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": stream, **extra}


async def one_streamed(session: aiohttp.ClientSession, url: str, key: str, payload: dict) -> tuple[int, float | None]:
    """Status and seconds to the first chunk with generated text (None if none came)."""
    t0 = time.perf_counter()
    try:
        async with session.post(url + "/v1/chat/completions", json=payload,
                                headers={"Authorization": f"Bearer {key}"}) as r:
            if r.status != 200:
                await r.read()
                return r.status, None
            parser, ttft = SSEParser(), None
            async for chunk in r.content.iter_any():
                for event in parser.feed(chunk):
                    if ttft is None and event != "[DONE]":
                        delta = (json.loads(event).get("choices") or [{}])[0].get("delta") or {}
                        if delta.get("content"):
                            ttft = time.perf_counter() - t0
            return 200, ttft
    except aiohttp.ClientError:
        return -1, None


async def poisson(urls: list[str], key: str, payload: dict, *, rate: float, seconds: float, seed: int,
                  streamed: bool) -> list[tuple[int, float | None, float]]:
    """Open-loop Poisson arrivals at ``rate``/s for ``seconds``, round-robin over ``urls``:
    (status, ttft, finished_at) per request."""
    rng = random.Random(seed)
    out: list[tuple[int, float | None, float]] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def go(url: str) -> None:
            if streamed:
                status, ttft = await one_streamed(session, url, key, payload)
            else:
                try:
                    status, ttft = await one_plain(session, url, key, payload)
                except aiohttp.ClientError:
                    status, ttft = -1, None
            out.append((status, ttft, time.monotonic()))

        tasks, start, t, i = [], time.monotonic(), 0.0, 0
        while True:
            t += rng.expovariate(rate)
            if t >= seconds:
                break
            await asyncio.sleep(max(0.0, start + t - time.monotonic()))
            tasks.append(asyncio.create_task(go(urls[i % len(urls)])))
            i += 1
        end = start + seconds
        if streamed:
            await asyncio.gather(*tasks)
        else:  # the flood stops with the phase: what is still waiting is abandoned
            await asyncio.wait(tasks, timeout=max(0.0, end - time.monotonic()) + 0.01)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return out


async def engine_idle(url: str, timeout_s: float = 60) -> None:
    """Until the engine runs and queues nothing (B's abandoned requests aborted)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            busy = sum(float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")))
            if busy == 0:
                return
            await asyncio.sleep(0.2)
    raise RuntimeError("the engine did not drain")


class Occupancy:
    """The engine's running and waiting requests, sampled every ``period_s`` in a thread while
    a phase runs: slots left idle while requests wait in a gateway are throughput lost."""

    def __init__(self, url: str, period_s: float = 0.1):
        self.url, self.period_s = url, period_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Occupancy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=2.0) as c:
            while not self._stop.wait(self.period_s):
                try:
                    text = c.get(self.url + "/metrics").text
                except httpx.HTTPError:
                    continue
                got = {"running": 0.0, "waiting": 0.0}
                for line in text.splitlines():
                    for k in got:
                        if line.startswith(f"vllm:num_requests_{k}"):
                            got[k] += float(line.split()[-1])
                self.samples.append((got["running"], got["waiting"]))

    def summary(self, slots: int) -> dict:
        """Mean running and waiting, and the share of samples with a slot free."""
        xs = self.samples[len(self.samples) // 10:]  # the phase's first tenth is the ramp
        if not xs:
            return {}
        return {"samples": len(xs), "running_mean": round(sum(r for r, _ in xs) / len(xs), 3),
                "waiting_mean": round(sum(w for _, w in xs) / len(xs), 3),
                "slot_free_share": round(sum(1 for r, _ in xs if r < slots) / len(xs), 3)}


async def one_plain(session: aiohttp.ClientSession, url: str, key: str, payload: dict) -> tuple[int, None]:
    """Status of one non-streamed request, read to its end."""
    async with session.post(url + "/v1/chat/completions", json=payload,
                            headers={"Authorization": f"Bearer {key}"}) as r:
        await r.read()
        return r.status, None


async def closed_loop(url: str, payload: dict, one, *, concurrency: int, seconds: float) -> tuple[int, list[float], float]:
    """``concurrency`` workers sending ``payload`` as tenant B back to back for ``seconds``, each
    request through ``one`` (one_plain or one_streamed): the requests answered 200 within them,
    their times to first text (streamed), and the seconds the loop ran."""
    done, ttfts = 0, []
    stop = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop:
                status, ttft = await one(s, url, KEYS["B"], payload)
                if status == 200 and time.monotonic() <= stop:
                    done += 1
                    if ttft is not None:
                        ttfts.append(ttft)

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done, ttfts, time.monotonic() - t0


async def capacity(url: str, model: str, *, concurrency: int, max_tokens: int, seconds: float) -> float:
    """Completed requests/s in a closed loop of non-streamed requests at ``concurrency``."""
    done, _, elapsed = await closed_loop(url, body(model, max_tokens, stream=False), one_plain,
                                         concurrency=concurrency, seconds=seconds)
    return done / elapsed


async def solo(url: str, model: str, *, concurrency: int, max_tokens: int, seconds: float) -> dict:
    """One tenant alone, a closed loop of streamed requests at ``concurrency``: completed
    requests/s and the time to each one's first text chunk."""
    done, ttfts, elapsed = await closed_loop(url, body(model, max_tokens, stream=True), one_streamed,
                                             concurrency=concurrency, seconds=seconds)
    return {"req_per_s": done / elapsed, "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95),
            "n": done}


def flood_main(argv: list[str]) -> None:
    """B's process: ``URLS KEY MODEL RATE SECONDS MAX_TOKENS SEED OUT``."""
    urls, key, model, rate, seconds, max_tokens, seed, out = argv
    start = time.monotonic()
    got = asyncio.run(poisson(urls.split(","), key, body(model, int(max_tokens), stream=False), rate=float(rate),
                              seconds=float(seconds), seed=int(seed), streamed=False))
    end = start + float(seconds)
    statuses: dict[str, int] = {}
    for status, _, _ in got:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    done_in_phase = sum(1 for s, _, at in got if s == 200 and at <= end)
    Path(out).write_text(json.dumps({"statuses": statuses, "completed": done_in_phase, "seconds": float(seconds)}))


if __name__ == "__main__":
    flood_main(sys.argv[1:])
