"""Shared helpers: starting supervised processes (fake engine, gateway) on free ports."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from cluster.process import Command, ServerProcess, free_port

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def server(argv: list[str], *, port: int | None = None, env: dict[str, str] | None = None, log: Path | None = None,
           ready_timeout_s: float = 60) -> Iterator[ServerProcess]:
    """A server process on ``{port}``, healthy within ``ready_timeout_s``; a gateway's
    metrics-only port (``{metrics_port}``) is at ``proc.metrics_url``."""
    port = port or free_port()
    metrics_port = free_port()
    argv = [a.replace("{port}", str(port)).replace("{metrics_port}", str(metrics_port)) for a in argv]
    proc = ServerProcess(Command(argv, env=env or {}), log_path=log, port=port)
    proc.metrics_url = f"http://127.0.0.1:{metrics_port}"
    proc.start()
    try:
        asyncio.run(proc.wait_ready(ready_timeout_s))
        yield proc
    finally:
        proc.stop(grace_s=5)


def fake_engine_argv(model: str, *, ttft_ms: float = 5, itl_ms: float = 2, max_num_seqs: int = 64) -> list[str]:
    return [sys.executable, "-m", "loadtests.fake_engine", "--port", "{port}", "--model", model,
            "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms), "--max-num-seqs", str(max_num_seqs)]


def gateway_argv(*upstreams: str, config: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "cluster.gateway.main", "--port", "{port}", "--metrics-port", "{metrics_port}"]
    for u in upstreams:
        argv += ["--upstream", u]
    if config:
        argv += ["--config", config]
    return argv


def homed_session(index: int, replica_ids: list[str]) -> str:
    """A session id (``s<k>``) whose home by the gateway's session affinity (rendezvous
    hashing, cluster.routing.hashing) is ``replica_ids[index]``."""
    from cluster.routing.hashing import ranking

    return next(f"s{k}" for k in range(1000) if ranking(f"s{k}".encode(), replica_ids)[0] == index)


def wait_for(pred, timeout_s: float, what: str, *, period_s: float = 0.2):
    """Poll ``pred`` until it returns something truthy (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(period_s)


def metric(url: str, name: str, *, client: httpx.Client | None = None, **labels: str) -> float:
    """Sum of a Prometheus metric's samples whose labels include ``labels``; ``client``: a
    client of the caller's to read it with (a new httpx client per read costs ~10-20 ms of CPU)."""
    total = 0.0
    get = client.get if client is not None else httpx.get
    for line in get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, value = line.rsplit(" ", 1)
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


@pytest.fixture
def redis_server():
    """A redis-server of the test's own on a free port: (its URL, the LocalRedis to stop or restart)."""
    from cluster.tenancy.local_redis import LocalRedis

    url = f"redis://127.0.0.1:{free_port()}/0"
    server = LocalRedis.ensure(url)
    try:
        yield url, server
    finally:
        server.stop()
