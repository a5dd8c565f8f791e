"""When `owc serve` is ready: every gateway process sharing the port answers /ready 200.

The gateway processes share one port (SO_REUSEPORT) and each learns the engine replicas
through its own hand-off (cluster.discovery.handoff), so for a moment one may route while
another still answers 503. A single 200 is therefore not enough: each fresh connection
lands on one process, and /ready names the process ("process"), so the wait goes on until
as many distinct processes as were started have answered 200."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx


def wait_gateways_ready(url: str, processes: int, timeout_s: float, *,
                        get: Callable[..., httpx.Response] = httpx.get,
                        clock: Callable[[], float] = time.monotonic,
                        sleep: Callable[[float], None] = time.sleep) -> None:
    """Returns once ``processes`` distinct gateway processes have answered /ready 200 (each
    call a new connection, so the kernel spreads them); TimeoutError with the last answer."""
    deadline = clock() + timeout_s
    ready: set[str] = set()
    last = None
    while clock() < deadline:
        try:
            r = get(url + "/ready", timeout=2)
            if r.status_code == 200:
                try:
                    ready.add(str(r.json().get("process", "")))
                except (ValueError, AttributeError):  # something else answers there
                    last = f"not an owc gateway's /ready: {r.text[:200]}"
                    sleep(0.25)
                    continue
                if len(ready) >= processes:
                    return
                last = f"{len(ready)} of {processes} gateway processes ready"
                sleep(0.05)  # the next connection may land on another process: a short pause
                continue
            last = r.text
        except httpx.HTTPError as e:
            last = str(e)
        sleep(0.25)
    raise TimeoutError(f"gateway not ready after {timeout_s:.0f}s: {last}")
