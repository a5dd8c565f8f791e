"""Limits across gateway replicas with a shared Redis store: 1, 2 and 3 gateway processes
(separate ports, the client spreading requests round-robin) in front of one fake engine,
over-limit traffic for T seconds, accepted requests (and tokens) counted.

    python -m loadtests.tenancy_limits [--seconds 8] [--out loadtests/results/tenancy-limits.json]

Expected: 1 gateway accepts burst + rpm*T/60 requests (tokens_per_minute + tpm*T/60 tokens)
within +-15 %; 2 and 3 gateways within +-10 % of 1's count. The helpers (Redis, Stack,
drive) serve tests/integration/test_tenancy_redis.py too."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from cluster.process import Command, ServerProcess, free_port

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "loadtests" / "results" / "tenancy-limits.json"
KEY, TENANT, MODEL = "sk-tenancy-test", "acme", "fake"
REQUEST_LIMITS = {"requests_per_minute": 300, "burst": 20}
TOKEN_LIMITS = {"tokens_per_minute": 3000}
PROMPT = "one two three four five six seven eight"


class Redis:
    """A redis-server of our own on 127.0.0.1 (no persistence unless ``aof``), stopped by PID."""

    def __init__(self, port: int | None = None, *, workdir: str | None = None):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = workdir or tempfile.mkdtemp(prefix="owc-redis-")
        self._proc: subprocess.Popen | None = None

    def start(self) -> Redis:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self._proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                       "--dir", self._dir, "--appendonly", "no"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=0.5).ping()
                return self
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
        self._proc = None

    def flush(self) -> None:
        import redis

        redis.Redis(port=self.port).flushall()


def write_config(path: Path, *, tenant: dict, store_url: str | None, on_failure: str = "local", replicas: int = 1) -> Path:
    gw: dict = {"tenants": {TENANT: tenant}, "replicas": replicas, "access_log": {"enabled": False}}
    if store_url:
        gw["store"] = {"url": store_url, "on_failure": on_failure}
    path.write_text(yaml.safe_dump({"models": {MODEL: {"source": "external"}}, "gateway": gw}))
    return path


class Stack:
    """One fake engine and ``n`` gateway processes with one config."""

    def __init__(self, n: int, config: Path, *, log_dir: Path, itl_ms: float = 0.5):
        self.n, self.config, self.log_dir, self.itl_ms = n, config, log_dir, itl_ms
        self.engine: ServerProcess | None = None
        self.gateways: list[ServerProcess] = []
        self.metrics_urls: list[str] = []

    def start(self) -> Stack:
        self.engine = ServerProcess(Command([sys.executable, "-m", "loadtests.fake_engine", "--port", "{port}", "--model",
                                             MODEL, "--ttft-ms", "2", "--itl-ms", str(self.itl_ms)]), log_path=self.log_dir / "engine.log")
        self.engine.start()
        asyncio.run(self.engine.wait_ready(60))
        self.start_gateways()
        return self

    def start_gateways(self) -> None:
        self.gateways, self.metrics_urls = [], []
        for i in range(self.n):
            mport = free_port()
            g = ServerProcess(Command(
                [sys.executable, "-m", "cluster.gateway.main", "--config", str(self.config), "--port", "{port}",
                 "--metrics-port", str(mport), "--upstream", f"{MODEL}={self.engine.url}"],
                env={"OWC_API_KEYS": f"{KEY}={TENANT}"}), log_path=self.log_dir / f"gateway-{i}.log")
            g.start()
            self.gateways.append(g)
            self.metrics_urls.append(f"http://127.0.0.1:{mport}")
        for g in self.gateways:
            asyncio.run(g.wait_ready(60))

    def stop_gateways(self) -> None:
        for g in self.gateways:
            g.stop(grace_s=5)

    def stop(self) -> None:
        self.stop_gateways()
        if self.engine is not None:
            self.engine.stop(grace_s=5)

    @property
    def urls(self) -> list[str]:
        return [g.url for g in self.gateways]


def body(max_tokens: int = 16, *, stream: bool = False) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
            "stream": stream}


async def drive(urls: list[str], *, seconds: float, rate: float, payload: dict | None = None) -> dict:
    """Open-loop traffic at ``rate`` requests/s for ``seconds``, round-robin over ``urls``:
    statuses counted, tokens of the accepted requests summed (the engine's usage)."""
    payload = payload or body()
    statuses: dict[int, int] = {}
    tokens = 0
    headers = {"Authorization": f"Bearer {KEY}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)

    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        async def one(url: str) -> None:
            nonlocal tokens
            try:
                r = await client.post(url + "/v1/chat/completions", json=payload, headers=headers)
                status = r.status_code
                if status == 200:
                    tokens += r.json()["usage"]["total_tokens"]
            except httpx.HTTPError:
                status = -1
            statuses[status] = statuses.get(status, 0) + 1

        tasks, start, i = [], time.monotonic(), 0
        while (now := time.monotonic() - start) < seconds:
            tasks.append(asyncio.create_task(one(urls[i % len(urls)])))
            i += 1
            await asyncio.sleep(max(0.0, i / rate - now))
        await asyncio.gather(*tasks)
    return {"sent": i, "statuses": {str(k): v for k, v in sorted(statuses.items())}, "accepted": statuses.get(200, 0),
            "tokens": tokens}


def limits_stack(n: int, *, kind: str, redis: Redis, tmp: Path) -> Stack:
    """A started stack of ``n`` gateway processes with ``kind``'s limits on ``redis``, for
    ``measure`` runs over its first 1..n gateways (one start instead of one per run)."""
    redis.flush()  # an empty store, as for a stack of one run
    limits = REQUEST_LIMITS if kind == "requests" else TOKEN_LIMITS
    run_dir = tmp / f"{kind}-stack"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = write_config(run_dir / "owc.yaml", tenant=limits, store_url=redis.url, replicas=n)
    return Stack(n, cfg, log_dir=run_dir).start()


def forget_tenancy(redis: Redis) -> None:
    """The store's tenancy state gone (the tenant's limit counters, usage records and their
    index), as after a flush; the other keys live gateways keep there (shared stats scrapes,
    fair-queue counts) stay."""
    import redis as redis_py

    client = redis_py.Redis(port=redis.port)
    keys = [*client.scan_iter("owc:t:*"), *client.scan_iter("owc:u:*"), "owc:usage"]
    client.delete(*keys)


def wait_settled(redis: Redis, accepted: int, timeout_s: float = 15.0) -> None:
    """Until the store holds the usage of every accepted request: a request is settled just
    after its answer is sent, and a settlement landing after the next run's reset would count
    in that run."""
    import datetime as dt

    import redis as redis_py

    client = redis_py.Redis(port=redis.port, decode_responses=True)
    key = f"owc:u:{dt.datetime.now(dt.timezone.utc).date().isoformat()}:{TENANT}:{MODEL}"
    deadline = time.monotonic() + timeout_s
    while int(client.hget(key, "requests") or 0) < accepted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{accepted} accepted requests, {client.hget(key, 'requests')} settled after {timeout_s}s")
        time.sleep(0.05)


def measure(n: int, *, kind: str, seconds: float, redis: Redis, tmp: Path, stack: Stack | None = None) -> dict:
    """One run: ``kind`` "requests" (rpm + burst) or "tokens" (tokens_per_minute). ``stack``:
    a running ``limits_stack`` of at least ``n`` gateways of this kind, driven through its
    first ``n`` (its tenancy state reset first, its settlements awaited after); none: a stack
    of ``n`` started and stopped for this run."""
    limits = REQUEST_LIMITS if kind == "requests" else TOKEN_LIMITS
    rate = 40.0 if kind == "requests" else 60.0
    if stack is not None:
        assert len(stack.urls) >= n, (n, stack.urls)
        forget_tenancy(redis)
        got = asyncio.run(drive(stack.urls[:n], seconds=seconds, rate=rate))
        wait_settled(redis, got["accepted"])
    else:
        redis.flush()
        run_dir = tmp / f"{kind}-{n}"
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = write_config(run_dir / "owc.yaml", tenant=limits, store_url=redis.url, replicas=n)
        own = Stack(n, cfg, log_dir=run_dir).start()
        try:
            got = asyncio.run(drive(own.urls, seconds=seconds, rate=rate))
        finally:
            own.stop()
    if kind == "requests":
        expected = limits["burst"] + limits["requests_per_minute"] * seconds / 60
        count = got["accepted"]
    else:
        expected = limits["tokens_per_minute"] * (1 + seconds / 60)
        count = got["tokens"]
    return {"gateways": n, "kind": kind, "seconds": seconds, "limits": limits, "expected": expected, "count": count,
            **got}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="loadtests.tenancy_limits")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="owc-tenancy-"))
    redis = Redis().start()
    try:
        runs = [measure(n, kind=k, seconds=a.seconds, redis=redis, tmp=tmp) for k in ("requests", "tokens")
                for n in (1, 2, 3)]
    finally:
        redis.stop()
    doc = {"what": "accepted requests / tokens over T seconds of over-limit traffic, one Redis store, "
                   "gateways on separate ports, client round-robin", "host_cpus": os.cpu_count(), "runs": runs}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    for r in runs:
        print(f"{r['kind']:8} {r['gateways']} gateway(s): {r['count']} (expected {r['expected']:.0f}) {r['statuses']}")


if __name__ == "__main__":
    main()
