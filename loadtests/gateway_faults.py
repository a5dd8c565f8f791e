"""Gateway processes that come and go under load, on a real local Ray (`owc serve`'s
LocalCluster) with a real engine (vLLM-CPU's demo model, or the fake engine):

    python -m loadtests.gateway_faults [--engine vllm|fake] [--out loadtests/results/gateway-faults.json]

``ramp``: gateway.replicas {min 1, max 2, initial 1}. Streams of >= 10 s and a trickle of new
short requests; every second the gateway policy (cluster.capacity.gateway_policy.decide, the
capacity controller's) reads the gateway processes' own metrics (each process's metrics port,
from the file_sd targets `owc serve` writes for Prometheus; summed as the controller's PromQL
sums them) and scales `owc-gateway` through RayServeActuator. A wave of streams scales it to
2; once the load is gone for down_stabilization_s it goes back to 1 while a second wave of
>= 10 s streams runs through both. Then the engines (2 replicas) are scaled to 1, as the
controller would, with a third wave of >= 10 s streams through both. Counted: streams cut,
requests failed.

``sigkill``: the default gateway count (2 processes). A closed loop of short requests (a
request whose connection fails is retried once, as clients do), one gateway process
SIGKILLed; counted: requests that failed after their one retry, retries, and the seconds
until two processes listen on the port again (Serve replaces the dead replica)."""

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

from cluster.capacity.gateway_policy import GATEWAY, GatewaySignals, decide
from cluster.capacity.policy import PolicyState
from cluster.config.loader import parse_config
from cluster.process import free_port
from loadtests import fault_load

OUT = Path("loadtests/results/gateway-faults.json")
MODEL = "m"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}], "ignore_eos": True}


def config(tmp: Path, *, engine: str, replicas, engines: int = 1) -> dict:
    model = {"source": "demo:tiny-llama", "max_model_len": 4096, "dtype": "float32", "cpus_per_replica": 0.5,
             "engine_kwargs": {"enforce_eager": True, "kv_cache_memory_bytes": 64 << 20, "max_num_seqs": 32},
             "engine_env": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}}
    if engine == "fake":
        model = {"source": "demo:tiny-llama", "cpus_per_replica": 0.5}
    model["replicas"] = {"min": 1, "max": engines, "initial": engines}
    return {
        "models": {MODEL: model},
        "gateway": {"host": "127.0.0.1", "port": free_port(), "replicas": replicas, "cpus": 0.25,
                    "access_log": {"enabled": False},
                    # Loop lag bound raised: here the gateways share 2 cores with the engine (with
                    # CPUs of their own, the default 50 ms); the ramp is sized by in-flight requests.
                    "autoscaling": {"target_in_flight_per_replica": 8, "down_stabilization_s": 5, "max_loop_lag_s": 1.0,
                                    "up_cooldown_s": 0, "down_cooldown_s": 0, "drain_timeout_s": 120}},
        "monitoring": {"file_sd_dir": str(tmp / "targets")},
        "model_cache_dir": str(tmp / "models"),
    }


def listeners(port: int) -> list[int]:
    """PIDs of the processes listening on the API port."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    return sorted({int(p.split("=")[1]) for line in out.splitlines() for p in line.split(",") if p.startswith("pid=")})


def gateway_metrics(sd_dir: Path):
    """Each reachable gateway process's metric families (its metrics port, from the file_sd
    targets `owc serve` writes for Prometheus); one list per process."""
    for f in sd_dir.glob("gateway-*.json"):
        try:
            text = f.read_text()
        except FileNotFoundError:  # its process left (a scale-down) between the listing and the read
            continue
        for group in json.loads(text or "[]"):
            for target in group["targets"]:
                try:
                    text = httpx.get(f"http://{target}/metrics", timeout=2).text
                except httpx.HTTPError:
                    continue
                yield list(text_string_to_metric_families(text))


def gateway_signals(sd_dir: Path) -> GatewaySignals:
    """What the controller's queries compute, from each gateway process's own metrics port."""
    in_flight, lag, seen = 0.0, None, False
    for families in gateway_metrics(sd_dir):
        seen = True
        held = busy = 0.0
        for fam in families:
            if fam.name == "owc_requests_in_flight":
                busy = sum(s.value for s in fam.samples)
            elif fam.name == "owc_fair_queue_depth":
                held = sum(s.value for s in fam.samples)
            elif fam.name == "owc_event_loop_lag_seconds":
                lag = max(lag or 0.0, *(s.value for s in fam.samples))
        in_flight += max(0.0, busy - held)
    return GatewaySignals(at=time.monotonic(), in_flight=in_flight if seen else None, loop_lag_s=lag)


class Load(fault_load.Load):
    """Streams and short requests against the cluster's port (loadtests.fault_load classifies
    each; a connection that fails before any byte is retried once, on a new connection)."""

    def __init__(self, url: str):
        super().__init__([url])

    async def stream(self, client: httpx.AsyncClient, tokens: int) -> None:
        await self.request(client, {**BODY, "max_tokens": tokens, "stream": True})

    async def trickle(self, client: httpx.AsyncClient, stop: asyncio.Event, period_s: float = 0.1) -> None:
        await self.loop(client, stop, lambda: {**BODY, "max_tokens": 2}, pause_s=period_s)

    @property
    def streams(self) -> dict[str, int]:
        s = [o for o in self.outcomes if o.stream]
        return {"ok": sum(o.kind == "succeeded" for o in s), "cut": sum(o.kind != "succeeded" for o in s)}

    @property
    def requests(self) -> dict[str, int]:
        r = [o for o in self.outcomes if not o.stream]
        return {"ok": sum(o.kind == "succeeded" for o in r), "failed": sum(o.kind != "succeeded" for o in r),
                "retried": sum(o.retried for o in r)}

    @property
    def errors(self) -> list[str]:
        return [o.detail for o in self.outcomes if o.kind != "succeeded"]


def resumed(sd_dir: Path) -> int:
    """Streams the gateway processes resumed (their metrics ports, as for the signals)."""
    return int(sum(s.value for families in gateway_metrics(sd_dir) for fam in families
                   if fam.name == "owc_stream_resumes" for s in fam.samples
                   if s.name.endswith("_total") and s.labels.get("result") == "resumed"))


async def ramp(cluster, sd_dir: Path, tokens: tuple[int, int]) -> dict:
    from cluster.capacity.actuators import RayServeActuator

    cfg = cluster.cfg.gateway
    act = RayServeActuator()
    state, counts, decisions = PolicyState(), [], []
    load = Load(cluster.url)

    def control() -> tuple[int, float | None, float | None]:
        nonlocal state
        current, _ = act.replicas(GATEWAY)
        sig = gateway_signals(sd_dir)
        d = decide(sig, current=current, settings=cfg.autoscaling, bounds=cfg.replicas,
                   state=state, now=time.monotonic())
        state = d.state
        if d.target != current:
            act.scale(GATEWAY, d.target)
            decisions.append({"at_s": round(time.monotonic() - t0, 1), "from": current, "to": d.target,
                              "reason": d.reason})
        return current, sig.in_flight, None if sig.loop_lag_s is None else round(sig.loop_lag_s, 3)

    async def controller(stop: asyncio.Event) -> None:
        while not stop.is_set():
            target, in_flight, lag = await asyncio.to_thread(control)
            counts.append((round(time.monotonic() - t0, 1), target, len(listeners(cluster.cfg.gateway.port)),
                           in_flight, lag))
            await asyncio.sleep(1.0)

    t0 = time.monotonic()
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=300, limits=limits) as streams, \
            httpx.AsyncClient(timeout=60, limits=limits) as shorts:
        ctl = asyncio.create_task(controller(stop))
        trickle = asyncio.create_task(load.trickle(shorts, stop))
        # Wave 1: 17 streams at 8 per process: the policy wants 3, max is 2.
        wave1 = [asyncio.create_task(load.stream(streams, tokens[0])) for _ in range(17)]
        await wait_until(lambda: len(listeners(cluster.cfg.gateway.port)) == 2, 120,
                         lambda: f"scale-up; timeline {counts} decisions {decisions}")
        up_at = time.monotonic() - t0
        await asyncio.gather(*wave1)
        # Wave 2 while both processes run: 4 streams (under one process's target), so the
        # policy scales down after the stabilization window with them in flight through both.
        wave2 = [asyncio.create_task(load.stream(streams, tokens[1])) for _ in range(4)]
        await wait_until(lambda: len(listeners(cluster.cfg.gateway.port)) == 1, 120,
                         lambda: f"scale-down; timeline {counts} decisions {decisions} streams {load.streams}")
        down_at = time.monotonic() - t0
        in_flight_at_down = sum(not t.done() for t in wave2)
        await asyncio.gather(*wave2)
        stop.set()
        await asyncio.gather(ctl, trickle)
        gateway_record = load.record(
            "gateway_scale_down", fault_at=t0 + down_decided(decisions), recovered_at=t0 + down_at,
            resumed=resumed(sd_dir), streams_in_flight=in_flight_at_down)
        # Wave 3: the engines' scale-down (2 -> 1 replicas, as the controller would) with
        # >= 10 s streams in flight through both replicas.
        engines = Load(cluster.url)
        stop = asyncio.Event()
        trickle = asyncio.create_task(engines.trickle(shorts, stop))
        wave3 = [asyncio.create_task(engines.stream(streams, tokens[1])) for _ in range(4)]
        await asyncio.sleep(3)
        scaled_at = time.monotonic()
        await asyncio.to_thread(act.scale, MODEL, 1)
        await wait_until(lambda: act.replicas(MODEL) == (1, 1), 300, lambda: f"engine scale-down: {act.replicas(MODEL)}")
        engine_down_at = time.monotonic()
        in_flight_at_engine_down = sum(not t.done() for t in wave3)
        await asyncio.gather(*wave3)
        stop.set()
        await trickle
        engine_record = engines.record("engine_scale_down", fault_at=scaled_at, recovered_at=engine_down_at,
                                       resumed=resumed(sd_dir), streams_in_flight=in_flight_at_engine_down)
    return {"streams": load.streams, "requests": load.requests, "errors": load.errors[:20],
            "scaled_up_at_s": round(up_at, 1), "scaled_down_at_s": round(down_at, 1),
            "streams_in_flight_at_scale_down": in_flight_at_down, "decisions": decisions,
            "timeline": counts, "records": [gateway_record, engine_record]}


def down_decided(decisions: list[dict]) -> float:
    """Seconds from the start at which the policy decided the gateways' scale-down."""
    return next(d["at_s"] for d in decisions if d["to"] < d["from"])


async def sigkill(cluster) -> dict:
    port = cluster.cfg.gateway.port
    await wait_until(lambda: len(listeners(port)) == 2, 120)
    await asyncio.sleep(3)  # settled: Serve replaced no replica meanwhile
    await wait_until(lambda: len(listeners(port)) == 2, 120)
    load = Load(cluster.url)
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=60) as client:
        workers = [asyncio.create_task(load.trickle(client, stop, period_s=0.0)) for _ in range(8)]
        await asyncio.sleep(3)
        pids = listeners(port)
        victim = pids[0]
        before = dict(load.requests)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        # Restored: two processes again, one of them new (Serve replaced the dead replica).
        await wait_until(lambda: len(now := listeners(port)) == 2 and set(now) - set(pids), 180)
        restored_s = time.monotonic() - killed_at
        after_pids = listeners(port)
        await asyncio.sleep(2)
        stop.set()
        await asyncio.gather(*workers)
        record = load.record("gateway_sigkill", fault_at=killed_at, recovered_at=killed_at + restored_s,
                             resumed=0)
    return {"requests": load.requests, "before_kill": before, "errors": load.errors[:20],
            "seconds_to_two_processes": round(restored_s, 1), "listeners_before": pids, "listeners_after": after_pids,
            "records": [record]}


async def wait_until(pred, timeout_s: float, what=lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(pred):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what()}")
        await asyncio.sleep(0.2)


def run(scenario: str, engine: str, tmp: Path) -> dict:
    from cluster.runner import LocalCluster

    launcher = {}
    # Streams of >= 10 s either way on this machine (wave 1 within the demo engine's KV cache).
    tokens = (1800, 3500) if engine == "vllm" else (2500, 2500)
    if engine == "fake":
        from loadtests.fake_engine import fake_launcher
        launcher = {"launcher": fake_launcher}
    ramps = scenario in ("ramp", "both")
    replicas = {"min": 1, "max": 2, "initial": 1} if ramps else 2
    cfg = parse_config(config(tmp, engine=engine, replicas=replicas, engines=2 if ramps else 1))
    cluster = LocalCluster(cfg, temp_dir=str(tmp / "ray"), **launcher)
    cluster.start(ready_timeout_s=600)
    try:
        results = {}
        if ramps:
            results["ramp"] = asyncio.run(ramp(cluster, tmp / "targets", tokens))
        if scenario in ("sigkill", "both"):
            if ramps:  # on the same cluster: back to two gateway processes first
                from cluster.capacity.actuators import RayServeActuator
                RayServeActuator().scale(GATEWAY, 2)
            results["sigkill"] = asyncio.run(sigkill(cluster))
        return results
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="loadtests.gateway_faults", description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=["vllm", "fake"], default="vllm")
    p.add_argument("--scenario", choices=["ramp", "sigkill", "both"], default="both")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    # On a Ray of its own, in a child process (one ray.init per process); both scenarios
    # share one cluster (the SIGKILL after the ramp, gateways back at 2).
    tmp = Path(tempfile.mkdtemp(prefix=f"owc-gwfaults-{a.scenario}-"))
    out = tmp / "result.json"
    subprocess.run([sys.executable, "-c", f"import json, sys; from pathlib import Path; "
                    f"from loadtests.gateway_faults import run; "
                    f"Path({str(out)!r}).write_text(json.dumps(run({a.scenario!r}, {a.engine!r}, Path({str(tmp)!r}))))"],
                   check=True)
    results = json.loads(out.read_text())
    for name, r in results.items():
        print(name, json.dumps(r)[:600], file=sys.stderr)
    doc = {"what": __doc__.split("\n\n")[1].strip(), "engine": a.engine, "host_cpus": os.cpu_count(), **results}
    for r in results.values():  # the fault suite's records (loadtests.fault_load)
        for rec in r.pop("records", []):
            doc.setdefault("fault_records", []).append(rec)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
