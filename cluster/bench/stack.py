"""The comparison stack: one vLLM engine (the owc config's first model and its engine
settings) with the owc gateway process and vllm-router in front of it, all on loopback.
Benchmarks add further candidates (their own server processes) with `extra`."""

from __future__ import annotations

import asyncio
import shutil
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cluster.config.loader import load_config
from cluster.engine.launcher import vllm_launcher
from cluster.process import Command, ServerProcess, free_port
from cluster.tenancy.local_redis import LocalRedis

LOG_DIR = Path("/tmp/owc-bench")


def router_bin() -> str:
    beside = Path(sys.executable).parent / "vllm-router"
    return str(beside) if beside.exists() else (shutil.which("vllm-router") or "vllm-router")


@dataclass
class Stack:
    model: str
    targets: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int | list[int]] = field(default_factory=dict)  # a target's processes (CPU time)
    engine_settings: dict = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # what every request carries (the tenant's key)


# The owc gateway as a platform team runs it: a tenant with its key and limits (tenancy on the
# local store), its defaults otherwise (fair sharing, stream resume, metrics, access log).
BENCH_KEY = "sk-owc-bench-0123456789abcdef"
BENCH_TENANT = {"requests_per_minute": 1_000_000, "burst": 100_000, "tokens_per_minute": 1_000_000_000,
                "max_concurrent": 10_000, "daily_tokens": 10**15}


def gateway_config(model: str, *, store_url: str | None = None, resume: bool = True) -> dict:
    gw: dict = {"tenants": {"bench": BENCH_TENANT}}
    if store_url:  # two processes share fair sharing's counts and the engine scrapes, as on owc serve
        gw["fair_sharing"] = {"store_url": store_url}
    return {"models": {model: {"source": "external", "resume_streams": resume}}, "gateway": gw}


@dataclass(frozen=True)
class Candidate:
    """A further target, started after the others: ``argv(port)`` is its server's command
    line, ready when ``health_path`` answers."""

    name: str
    argv: Callable[[int], list[str]]
    label: str = ""
    log_name: str = ""
    health_path: str = "/health"
    timeout_s: float = 600


def start_ready(procs: list[ServerProcess], proc: ServerProcess, timeout_s: float) -> ServerProcess:
    """Start ``proc``, listed in ``procs`` first (so that the caller stops it whatever happens),
    and wait until it answers."""
    procs.append(proc)
    proc.start()
    asyncio.run(proc.wait_ready(timeout_s))
    return proc


@contextmanager
def comparison_stack(config: str | None = None, *, router: bool = True, extra: Sequence[Candidate] = (),
                     resume_off: bool = False, two_processes: bool = False) -> Iterator[Stack]:
    """``resume_off``: a second gateway, identical but for stream resume off
    (``owc-gateway-resume-off``): the per-chunk cost of reading the token ids.
    ``two_processes``: owc's default two gateway processes on one port (``owc-gateway-2proc``),
    sharing a local Redis as on `owc serve`."""
    cfg = load_config(config)
    model, mcfg = next(iter(cfg.models.items()))
    LOG_DIR.mkdir(exist_ok=True)
    procs: list[ServerProcess] = []
    stops: list[Callable[[], None]] = []
    try:
        print(f"starting vLLM ({model}) …", file=sys.stderr)
        engine = start_ready(procs, ServerProcess(vllm_launcher(model, mcfg, cfg.model_cache_dir), log_path=LOG_DIR / "engine.log"), 600)
        stack = Stack(model=model, engine_settings=mcfg.model_dump(mode="json"))
        stack.targets["bare-vllm"] = engine.url
        env = {"OWC_API_KEYS": f"{BENCH_KEY}=bench"}
        stack.headers = {"Authorization": f"Bearer {BENCH_KEY}"}

        def owc(name: str, cfg: dict, processes: int = 1) -> None:
            path = LOG_DIR / f"{name}.json"
            path.write_text(json.dumps(cfg))
            port = free_port()
            started = [start_ready(procs, ServerProcess(
                Command([sys.executable, "-m", "cluster.gateway.main", "--upstream", f"{model}={engine.url}",
                         "--port", str(port), "--config", str(path)], env=env),
                log_path=LOG_DIR / f"{name}-{i}.log", port=port), 60) for i in range(processes)]
            stack.targets[name] = started[0].url
            stack.pids[name] = [g.pid for g in started] if processes > 1 else started[0].pid

        owc("owc-gateway", gateway_config(model))
        if two_processes:
            url = f"redis://127.0.0.1:{free_port()}/0"
            stops.append(LocalRedis.ensure(url).stop)
            owc("owc-gateway-2proc", gateway_config(model, store_url=url), processes=2)
        if resume_off:
            owc("owc-gateway-resume-off", gateway_config(model, resume=False))
        if router:
            port = free_port()
            r = start_ready(procs, ServerProcess(
                Command([router_bin(), "--host", "127.0.0.1", "--port", str(port), "--worker-urls", engine.url,
                         "--policy", "round_robin", "--log-level", "warning"]),
                log_path=LOG_DIR / "router.log", port=port), 60)
            stack.targets["vllm-router"] = r.url
            stack.pids["vllm-router"] = r.pid
        for c in extra:
            port = free_port()
            print(f"starting {c.label or c.name} …", file=sys.stderr)
            s = start_ready(procs, ServerProcess(
                Command(c.argv(port)),
                log_path=LOG_DIR / (c.log_name or f"{c.name}.log"), port=port, health_path=c.health_path), c.timeout_s)
            stack.targets[c.name] = s.url
        yield stack
    finally:
        for proc in reversed(procs):
            proc.stop(grace_s=30)
        for stop in stops:
            stop()
