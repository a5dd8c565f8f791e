"""test_capacity's load, in a process of its own: the test process (its controller loop, its
Ray calls) did not let 8 client threads keep 8 requests in the gateway while a second engine
started on the 2-core machine, and the gateway's in-flight gauge, the controller's signal, read
under half of them for seconds."""

from __future__ import annotations

import threading
import time

import httpx
import orjson

from tests.conftest import sse_data


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
                for data in sse_data(r):
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
