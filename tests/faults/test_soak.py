"""Fault 8: a soak of steady mixed load through one gateway process (fake engine, so that
the gateway, not a CPU model, is what runs for the whole time): streamed and whole chat,
streamed completions, refused requests (400), and clients that leave in the middle of a
stream. Sampled every 5 s: the gateway's RSS and open file descriptors. After the warm-up
(a tenth of the run, at least 20 s): fds flat (no leaked connection or file), and in the
full soak (`make soak`: OWC_SOAK_S=1800) RSS growth < 5 % and the last tenth's TTFT p99
within 1.5x the first tenth's. `make test` runs it for 40 s (20 s of warm-up, 20 s checked:
~1,000 requests, ~80 clients leaving mid-stream, so a descriptor leaked per request or per
leaving client passes the bound many times over) and checks the fds only; `make faults` runs
the 60-s form its record names."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import yaml

from loadtests.fault_load import Load, write
from tests.conftest import fake_engine_argv, gateway_argv, server

SOAK_S = float(os.environ.get("OWC_SOAK_S", "60" if os.environ.get("OWC_FAULTS") == "full" else "40"))
FULL = SOAK_S >= 600
WORKERS = 8


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_soak_keeps_fds_flat_and_memory_bounded(tmp_path, faults_out):
    cfg = tmp_path / "owc.yaml"
    cfg.write_text(yaml.safe_dump({"models": {"m": {"source": "external"}},
                                   "gateway": {"api_keys_env": None, "access_log": {"enabled": False}}}))
    with server(fake_engine_argv("m", ttft_ms=20, itl_ms=5)) as engine, \
            server(gateway_argv(f"m={engine.url}", config=str(cfg))) as gw:
        load = Load([gw.url])
        samples, extra = asyncio.run(_soak(load, gw))
    warm = max(20.0, SOAK_S / 10)
    after = [s for s in samples if s[0] >= warm]
    rss0, rss1 = after[0][1], max(s[1] for s in after[-3:])
    fds0, fds1 = after[0][2], after[-1][2]
    t_end = samples[-1][0]
    first = [o.ttft_s for o in load.outcomes if o.ttft_s is not None and warm <= o.started - extra["t0"] < warm + SOAK_S / 10]
    last = [o.ttft_s for o in load.outcomes if o.ttft_s is not None and o.started - extra["t0"] >= t_end - SOAK_S / 10]
    p99 = lambda xs: sorted(xs)[int(0.99 * (len(xs) - 1))] if xs else None  # noqa: E731
    record = load.record("soak" if FULL else f"soak_{SOAK_S:.0f}s", fault_at=extra["t0"] + warm, recovered_at=None,
                         duration_s=round(t_end), rss_kib_after_warmup=rss0, rss_kib_end=rss1,
                         rss_growth=round(rss1 / rss0 - 1, 4), fds_after_warmup=fds0, fds_end=fds1,
                         fds_max=max(s[2] for s in after), ttft_p99_first_tenth=p99(first),
                         ttft_p99_last_tenth=p99(last), refused_400=extra["refused"], left_mid_stream=extra["left"],
                         samples=[list(s) for s in samples[:: max(1, len(samples) // 60)]])
    # before/during/after read as: the warm-up, the soak (no fault ends it)
    write(record, faults_out)
    assert record["lost"] == 0 and record["failed"] == 0, record
    assert extra["refused"] > 0 and extra["left"] > 0
    assert fds1 <= fds0 + 8 and max(s[2] for s in after) <= fds0 + 2 * WORKERS + 16, record["detail"]
    if FULL:
        assert rss1 / rss0 - 1 < 0.05, record["detail"]
        assert p99(last) <= 1.5 * p99(first), record["detail"]


async def _soak(load: Load, gw) -> tuple[list[tuple[float, int, int]], dict]:
    stop = asyncio.Event()
    extra = {"refused": 0, "left": 0, "t0": time.monotonic()}
    samples: list[tuple[float, int, int]] = []
    kinds = [
        lambda: load.body(20, True),
        lambda: load.body(8, False),
        lambda: {"model": "m", "prompt": "Résume ce texte.", "max_tokens": 16, "stream": True},
    ]

    async def worker(i: int, client: httpx.AsyncClient) -> None:
        n = i
        while not stop.is_set():
            n += 1
            if n % 11 == 0:  # refused: a clear 400, nothing reaches the engine
                r = await client.post(gw.url + "/v1/chat/completions", json={**load.body(4, False), "temperature": 9})
                assert r.status_code == 400
                extra["refused"] += 1
            elif n % 13 == 0:  # a client that leaves after the first event
                async with client.stream("POST", gw.url + "/v1/chat/completions", json=load.body(200, True)) as r:
                    async for _ in r.aiter_bytes():
                        break
                extra["left"] += 1
            else:
                body = kinds[n % len(kinds)]()
                if "prompt" in body:
                    await _completion(load, client, gw.url, body)
                else:
                    await load.request(client, body)

    async def sampler() -> None:
        while not stop.is_set():
            samples.append((round(time.monotonic() - extra["t0"], 1), _rss_kib(gw.pid), _fds(gw.pid)))
            await asyncio.sleep(5)

    async with httpx.AsyncClient(timeout=60) as client:
        tasks = [asyncio.create_task(worker(i, client)) for i in range(WORKERS)] + [asyncio.create_task(sampler())]
        await asyncio.sleep(SOAK_S)
        stop.set()
        await asyncio.gather(*tasks)
    await asyncio.sleep(1)
    samples.append((round(time.monotonic() - extra["t0"], 1), _rss_kib(gw.pid), _fds(gw.pid)))
    return samples, extra


async def _completion(load: Load, client: httpx.AsyncClient, url: str, body: dict) -> None:
    """A streamed completion, classified like the chat requests (text events, not deltas)."""
    from loadtests.fault_load import Outcome

    started = time.monotonic()
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            text = (await r.aread()).decode()
        ok = r.status_code == 200 and text.rstrip().endswith("data: [DONE]") and '"error"' not in text
        out = Outcome(started, "succeeded" if ok else "lost", detail="" if ok else text[:160])
    except httpx.HTTPError as e:
        out = Outcome(started, "lost", detail=repr(e))
    out.ended, out.stream = time.monotonic(), True
    load.outcomes.append(out)
