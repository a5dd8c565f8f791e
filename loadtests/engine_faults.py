"""An engine's vLLM process SIGKILLed under steady streamed load on a real local Ray
(`owc serve`'s LocalCluster; two engine replicas, vLLM-CPU or the fake engine), with >= 4
requests running and >= 4 queued in it: the queued ones are re-sent, the running streams
resumed on the other replica (cluster.gateway.stream.resume), and Serve replaces the dead replica.

    python -m loadtests.engine_faults [--engine vllm|fake] [--out FILE]

The record (loadtests.fault_load): recovery_s is from the kill until both replicas are
routable again (the gateway's owc_engine_replicas_routable); texts are checked against the
uninterrupted run's (greedy decoding). tests/faults/test_engine_kill.py is the CI form
without Ray (two engine processes behind one gateway)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cluster.config.loader import parse_config
from loadtests.fault_load import Load, wait_until
from loadtests.gateway_faults import MODEL, config, listeners, resumed

BATCH = 4
TOKENS = 48
PROMPTS = [[{"role": "user", "content": f"Write part {i} of the story, in French and in English."}] for i in range(6)]


def engine_pids(port: int) -> list[int]:
    """The engine server's own processes among those holding its port: the Serve replica
    that started it may hold the listening socket too (killing that one would let vLLM
    finish its streams)."""
    import psutil

    pids = listeners(port)
    engines = [p for p in pids if any(m in " ".join(psutil.Process(p).cmdline()) for m in ("vllm", "fake_engine"))]
    return engines or pids


def group_of(pids: list[int]) -> list[int]:
    """Every other process of the killed servers' process groups: vLLM's engine core under its
    API server (none of them may outlive the kill: ServerProcess.reap)."""
    import psutil

    groups = {os.getpgid(p) for p in pids}
    out = []
    for proc in psutil.process_iter():
        try:
            if proc.pid not in pids and os.getpgid(proc.pid) in groups:
                out.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def still_running(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (a zombie is not)."""
    import psutil

    out = []
    for p in pids:
        try:
            if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _targets(sd_dir: Path, prefix: str) -> list[str]:
    return [t for f in sd_dir.glob(f"{prefix}-*.json") for g in json.loads(f.read_text() or "[]") for t in g["targets"]]


def _gauge(target: str, name: str) -> float:
    text = httpx.get(f"http://{target}/metrics", timeout=5).text
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name)


def _routable(sd_dir: Path) -> float:
    return sum(_gauge(t, "owc_engine_replicas_routable") for t in _targets(sd_dir, "gateway"))


async def scenario(cluster, sd_dir: Path) -> dict:
    load = Load([cluster.url], model=MODEL)
    body = lambda i: load.body(TOKENS, True, PROMPTS[i % len(PROMPTS)], ignore_eos=True)  # noqa: E731
    await wait_until(lambda: _routable(sd_dir) == 2, 120, lambda: "two routable engines")
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=None)) as client:
        expected = [(await load.request(client, body(i))).text for i in range(len(PROMPTS))]
        load.outcomes.clear()
        stop = asyncio.Event()
        turn = iter(range(10**9))
        workers = [asyncio.create_task(load.loop(client, stop, lambda: body(next(turn)))) for _ in range(4 * BATCH + 2)]
        try:
            await asyncio.sleep(2)

            def busy():
                for t in _targets(sd_dir, "engines"):
                    running, waiting = _gauge(t, "vllm:num_requests_running"), _gauge(t, "vllm:num_requests_waiting")
                    if running >= 4 and waiting >= 4:
                        return t, running, waiting
                return None

            target, running, waiting = await wait_until(busy, 120, lambda: "an engine with 4 running, 4 queued",
                                                        period_s=0.02)
            pids = engine_pids(int(target.rsplit(":", 1)[1]))
            group = group_of(pids)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            await wait_until(lambda: _routable(sd_dir) < 2, 60, lambda: "the dead engine out of routing")
            await wait_until(lambda: _routable(sd_dir) == 2, 600, lambda: "the engine replaced")
            recovered_at = time.monotonic()
            orphans = still_running(group)  # what the dead server started, still running once it is replaced
            await asyncio.sleep(5)
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
    mismatches = [o.text[:80] for o in load.outcomes if o.kind == "succeeded" and o.text not in set(expected)]
    return load.record("engine_sigkill_ray", fault_at=killed_at, recovered_at=recovered_at, resumed=resumed(sd_dir),
                       running_at_kill=running, queued_at_kill=waiting, killed_pids=pids, its_group=group,
                       orphans_after_recovery=orphans,
                       streams_in_flight_at_kill=len(load.in_flight_at(killed_at)), text_mismatches=mismatches)


def run(engine: str, tmp: Path) -> dict:
    from cluster.runner import LocalCluster

    launcher = {}
    if engine == "fake":
        from loadtests.fake_engine import fake_launcher
        launcher = {"launcher": fake_launcher}
    doc = config(tmp, engine=engine, replicas=1, engines=2)
    doc["models"][MODEL]["replicas"] = {"min": 2, "max": 2}
    doc["models"][MODEL].setdefault("engine_kwargs", {})["max_num_seqs"] = BATCH
    doc["gateway"]["fair_sharing"] = {"dispatch_margin": BATCH + 2}  # vLLM's own queue holds some
    cluster = LocalCluster(parse_config(doc), temp_dir=str(tmp / "ray"), **launcher)
    cluster.start(ready_timeout_s=600)
    try:
        return asyncio.run(scenario(cluster, tmp / "targets"))
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="loadtests.engine_faults", description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=["vllm", "fake"], default="vllm")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="owc-enginefaults-"))
    out = tmp / "result.json"
    subprocess.run([sys.executable, "-c", f"import json; from pathlib import Path; "
                    f"from loadtests.engine_faults import run; "
                    f"Path({str(out)!r}).write_text(json.dumps(run({a.engine!r}, Path({str(tmp)!r}))))"], check=True)
    record = json.loads(out.read_text())
    a.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "detail"}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
