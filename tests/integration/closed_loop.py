"""test_capacity's load, in a process of its own, away from the test process's controller loop
and Ray calls. (With the load in the test process, the gateway's in-flight gauge, the
controller's signal, read under 2.7 of 8 requests for 3 s in one CI run while a second engine
started; with it here it still reads ~4 of 8 for seconds then: where those requests wait is not
known.)"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import orjson

from cluster.bench.driver import sse_payloads


def run(url: str, api_key: str, model: str, tokens: list[int], ready, stop, out) -> None:
    """One closed-loop worker per entry of ``tokens`` (its streams' length), until ``stop`` is
    set: then each leaves its stream (the gateway aborts it). Puts ``(served, errors)`` on
    ``out``: served as ``(arrival, duration, prompt tokens)``, arrival in time.monotonic()."""
    served: list[tuple[float, float, int]] = []
    errors: list[str] = []
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=300,
                          limits=httpx.Limits(max_connections=128))

    def worker(n: int) -> None:
        body = {"model": model, "prompt": f"load {n}", "max_tokens": n, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}
        prompt = 4
        while not stop.is_set():
            t, usage = time.monotonic(), None
            with client.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    raise AssertionError(f"{r.status_code}: {r.read()[:300]!r}")
                for data in sse_payloads(r.iter_bytes()):
                    if stop.is_set():
                        break
                    if data.startswith("{"):
                        event = orjson.loads(data)
                        if "error" in event:
                            raise AssertionError(data)
                        usage = event.get("usage") or usage
            # every token unless left: a request cut short would look like a dip in the load
            if not stop.is_set() and (usage or {}).get("completion_tokens") != n:
                raise AssertionError(f"a {n}-token request answered {usage}")
            prompt = usage["prompt_tokens"] if usage else prompt
            served.append((t, time.monotonic() - t, prompt))

    def guarded(n: int) -> None:
        try:
            worker(n)
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            errors.append(repr(e))
            stop.set()

    threads = [threading.Thread(target=guarded, args=(n,)) for n in tokens]
    ready.set()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    client.close()
    out.put((served, errors))


@contextmanager
def running(url: str, api_key: str, model: str, tokens: list[int]) -> Iterator[tuple[object, dict]]:
    """The load in a spawned process, started (its clients about to send) when this yields
    ``(stop, result)``: set ``stop`` to end it. On the way out it is stopped whatever
    happened, ``result`` gets ``served`` and ``errors``, and a process that gave nothing back
    is killed. A load that failed is the error raised (the cause of whatever failed after)."""
    mp = multiprocessing.get_context("spawn")
    ready, stop, out = mp.Event(), mp.Event(), mp.Queue()
    proc = mp.Process(target=run, args=(url, api_key, model, tokens, ready, stop, out), daemon=True)
    result: dict = {"served": [], "errors": []}
    proc.start()
    try:
        if not ready.wait(60):
            raise AssertionError("the load's process did not start within 60 s")
        yield stop, result
    finally:
        stop.set()
        try:
            result["served"], result["errors"] = out.get(timeout=120)
        except queue.Empty:
            result["errors"] = ["the load's process gave nothing back within 120 s"]
        proc.join(10)
        if proc.is_alive():
            proc.kill()
        if result["errors"]:
            raise AssertionError(f"the load failed: {result['errors'][:3]}")
