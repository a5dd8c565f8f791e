"""The real local run next to the simulator (`python -m loadtests.autoscaling --real bursty --seed 3`):
one trace served by a real local Ray Serve cluster — owc's gateway, the engine deployment
under the capacity controller (cluster.capacity.controller, the policy with burst sizing,
acting through Serve as `owc controller` does) reading a real Prometheus (`owc monitor`, 5 s
scrapes as shipped) — and the same trace replayed by the simulator with the same settings.

What is not real: the engines. vLLM-CPU on this machine's two shared cores serves a few
requests per second in all, so each engine replica runs loadtests/profiled_engine.py: the
simulator's replica model (prefill rate, decode step by batch size, max_num_seqs, KV use)
from the committed engine profile, with its per-token times dilated ``DILATION`` times (the
trace's rates, in units of one replica's capacity, fall by as much: a bursty trace peaks at
~9 req/s instead of ~190), and its start-up as in the profile (the engine answers /health
``startup_s`` after its Ray replica launched it; Ray's own actor start comes on top, and is
measured). No time compression: the generator's bursty shape over ``TRACE_S`` seconds (the
committed simulator results use 30 minutes; 10 here, chosen so the run fits in ~13 minutes).

Reported for both: the share of requests with a TTFT within the SLO (the real one measured
by the client from the request's scheduled time, so a load generator falling behind counts
against it; a failed request counts as a miss), replica-hours (the real one: every Serve
replica of the engine deployment, starting, running or draining, sampled each second over
the trace and its tail), scale events and peak replicas. The simulator is run twice: with
the profile's start-up (the prediction) and with the start-up measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from cluster.capacity import traces
from cluster.capacity.replay import KEDA_THRESHOLDS, digest, sized
from cluster.capacity.simulator import (
    EngineProfile, KedaThreshold, OwcPolicy, RayServeDefault, SimResult, TraceRequest, simulate,
)
from cluster.config.schema import Autoscaling, Replicas

DILATION = 20.0  # the engine profile's per-token times, this many times longer
TRACE_S = 600.0
TAIL_S = 60.0  # measured after the last arrival (the simulator's tail_s)
SCRAPE_S = 5.0  # Prometheus's interval, as shipped (cluster/metrics/prometheus/prometheus.yml)
MODEL = "bursty"
REPO = Path(__file__).resolve().parents[1]


def dilated(profile: EngineProfile, factor: float) -> EngineProfile:
    return replace(profile, prefill_tokens_per_s=profile.prefill_tokens_per_s / factor,
                   decode_step_base_s=profile.decode_step_base_s * factor,
                   decode_step_per_seq_s=profile.decode_step_per_seq_s * factor,
                   measured=f"{profile.measured} (per-token times x{factor:g} for the real run)")


def _row(r: SimResult) -> dict:
    return {**r.summary(), "events": r.events}


def simulated(trace: list[TraceRequest], profile: EngineProfile, settings: Autoscaling, bounds: Replicas, *,
              slo_s: float, interval_s: float, measured_startup_s: float | None) -> dict:
    """owc (profile start-up; start-up as measured), Ray Serve's default and the KEDA sweep's pick."""
    kw = {"slo_s": slo_s, "initial": bounds.min, "tail_s": TAIL_S}
    out = {"owc": _row(simulate(trace, profile, OwcPolicy(settings, bounds, interval_s=interval_s), **kw))}
    if measured_startup_s is not None:
        p = replace(profile, startup_s=measured_startup_s)
        out["owc_measured_startup"] = {"startup_s": measured_startup_s, **_row(
            simulate(trace, p, OwcPolicy(settings, bounds, interval_s=interval_s), **kw))}
    out["ray-serve-default"] = _row(simulate(trace, profile, RayServeDefault(bounds), **kw))
    sweep = [simulate(trace, profile, KedaThreshold(bounds, x), **kw) for x in KEDA_THRESHOLDS]
    met = [r for r in sweep if r.attainment >= 0.99]
    out["keda"] = _row(min(met, key=lambda r: r.replica_hours) if met else max(sweep, key=lambda r: r.attainment))
    return out


# --- the load generator (a process of its own: the driver's Ray and controller threads do
# not delay its sends) -------------------------------------------------------------------

async def _replay(url: str, trace_path: str, start: float, out: str) -> None:
    import aiohttp

    from cluster.bench.driver import one_request

    trace = traces_read(trace_path)
    results: list[dict] = [{} for _ in trace]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def fire(i: int, q: TraceRequest) -> None:
            await asyncio.sleep(max(0.0, start + q.t - time.time()))
            lag = time.time() - start - q.t
            prompt = f"r{i} " + "x " * (q.prompt - 1)  # the fake engine counts words; a prefix of its own
            r = await one_request(session, url, MODEL, prompt, q.output, chat=False, timeout_s=600)
            results[i] = {"t": q.t, "lag_s": lag, "ok": r.ok, "status": r.status, "error": r.error,
                          "ttft_s": lag + r.ttft_s if r.ok and r.ttft_s is not None else None,
                          "e2e_s": lag + r.e2e_s if r.e2e_s is not None else None, "tokens": r.output_tokens}

        await asyncio.gather(*(fire(i, q) for i, q in enumerate(trace)))
    Path(out).write_text(json.dumps(results))


def traces_read(path: str) -> list[TraceRequest]:
    from cluster.capacity.simulator import load_trace

    return load_trace(path)


# --- the real run -----------------------------------------------------------------------

def _config(tmp: Path, profile: EngineProfile, settings: Autoscaling, bounds: Replicas) -> dict:
    from cluster.process import free_port

    return {
        "models": {MODEL: {
            "source": "demo:tiny-llama",  # built, never loaded: the profiled engine serves
            "cpus_per_replica": 0.25, "replicas": bounds.model_dump(),
            "engine_env": {"OWC_PROFILED_ENGINE": json.dumps(asdict(profile))},
            # no gateway queue bound: the test is about scaling, not admission
            "routing": {"params": {"queue_bound": {"max_queue_per_replica": 100000}}},
            "autoscaling": settings.model_dump(),
        }},
        "gateway": {"host": "127.0.0.1", "port": free_port(), "metrics_port": free_port(), "replicas": 1,
                    "access_log": {"enabled": False}},
        "monitoring": {"file_sd_dir": str(tmp / "targets")},
        "model_cache_dir": str(tmp / "models"),
    }


def _prometheus_bin() -> str:
    import shutil

    found = shutil.which("prometheus", path=f"{REPO / '.tools' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        raise SystemExit("prometheus not found on PATH or in .tools/bin: `make tools`")
    return found


@contextlib.contextmanager
def _monitor(cfg: dict, tmp: Path):
    """`owc monitor` (a real Prometheus) on the cluster, stopped (and its Prometheus) after."""
    import psutil
    import yaml

    from cluster.process import free_port

    (tmp / "owc.yaml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    env = {**os.environ, "PATH": f"{os.path.dirname(_prometheus_bin())}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "monitor", str(tmp / "owc.yaml"), "--port", str(port), "--data-dir",
         str(tmp / "prom"), "--scrape-interval", f"{SCRAPE_S:g}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    children = []
    try:
        line = proc.stdout.readline()
        if url not in line:
            raise RuntimeError(f"owc monitor did not start: {line}")
        children = psutil.Process(proc.pid).children(recursive=True)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()


def controller_on(cfg, prom: str, interval_s: float):
    """The capacity controller acting through Ray Serve on Prometheus' signals (actuator,
    signals, controller), once Prometheus holds fresh gateway series for the model."""
    from prometheus_client import CollectorRegistry

    from cluster.capacity.actuators import RayServeActuator
    from cluster.capacity.controller import CapacityController
    from cluster.capacity.signals import PrometheusSignals

    actuator, signals = RayServeActuator(), PrometheusSignals(prom)
    ctl = CapacityController(config=cfg, signals=signals, actuator=actuator, registry=CollectorRegistry(),
                             interval_s=interval_s)
    deadline = time.time() + 120
    while not ((sig := signals.read(MODEL)) is not None and sig.ongoing is not None
               and time.time() - sig.at < 2 * SCRAPE_S):
        if time.time() > deadline:
            raise RuntimeError("Prometheus never had the gateway's series")
        time.sleep(1)
    return actuator, signals, ctl


def real_run(trace_path: Path, trace: list[TraceRequest], profile: EngineProfile, settings: Autoscaling,
             bounds: Replicas, *, slo_s: float, interval_s: float, tmp: Path) -> dict:
    from ray import serve

    from cluster.capacity.actuators import serve_deployment
    from cluster.config.loader import parse_config
    from cluster.runner import LocalCluster
    from loadtests.profiled_engine import profiled_launcher

    doc = _config(tmp, profile, settings, bounds)
    cluster = LocalCluster(parse_config(doc), launcher=profiled_launcher,
                           temp_dir=tempfile.mkdtemp(prefix="owc-asr-"))  # short: Ray's socket paths
    t_setup = time.time()
    cluster.start(ready_timeout_s=300)
    try:
        with _monitor(cluster.cfg.model_dump(mode="json"), tmp) as prom:
            actuator, signals, ctl = controller_on(cluster.cfg, prom, interval_s)
            setup_s = time.time() - t_setup
            start = time.time() + 3.0
            results_path = tmp / "requests.json"
            gen = subprocess.Popen([sys.executable, "-m", "loadtests.autoscaling_real", "load", "--url", cluster.url,
                                    "--trace", str(trace_path), "--start", f"{start:.3f}", "--out", str(results_path)])
            end = trace[-1].t + TAIL_S
            samples: list[dict] = []
            decisions: list[dict] = []
            dep = serve_deployment(MODEL)
            next_decision = 0.0
            try:
                time.sleep(max(0.0, start - time.time()))
                while True:
                    t = time.time() - start
                    if t >= end and gen.poll() is not None:
                        break
                    states = serve.status().applications["owc"].deployments[dep].replica_states
                    states = {str(getattr(k, "value", k)): v for k, v in states.items()}
                    samples.append({"t": round(t, 2), "replicas": sum(states.values()),
                                    "running": states.get("RUNNING", 0)})
                    if t >= next_decision:
                        current = actuator.replicas(MODEL)[0]
                        d = ctl.reconcile_once().get(MODEL)
                        if d is not None:
                            decisions.append({"t": round(t, 2), "from": current, "to": d.target, "reason": d.reason})
                        next_decision += interval_s
                    time.sleep(max(0.0, 1.0 - (time.time() - start - t)))
            finally:
                if gen.poll() is None:
                    gen.wait(timeout=600)
            reqs = json.loads(results_path.read_text())
    finally:
        cluster.stop()
    return summarise(reqs, samples, decisions, slo_s=slo_s, end=end) | {"setup_s": setup_s}


def summarise(reqs: list[dict], samples: list[dict], decisions: list[dict], *, slo_s: float, end: float) -> dict:
    ttfts = sorted(r["ttft_s"] for r in reqs if r.get("ttft_s") is not None)
    met = sum(1 for x in ttfts if x <= slo_s)
    within = [s for s in samples if s["t"] <= end]
    hours = sum(a["replicas"] * (b["t"] - a["t"]) for a, b in zip(within, within[1:])) / 3600.0
    events = [{"t": d["t"], "from": d["from"], "to": d["to"], "reason": d["reason"]} for d in decisions
              if d["to"] != d["from"]]
    peak = max([e["to"] for e in events] + [s["running"] for s in within] + [1])
    startups = []  # a scale-up until as many replicas run as it asked for
    for e in events:
        if e["to"] > e["from"]:
            up = next((s["t"] for s in samples if s["t"] >= e["t"] and s["running"] >= e["to"]), None)
            if up is not None:
                startups.append(round(up - e["t"], 1))
    lags = sorted(r["lag_s"] for r in reqs if "lag_s" in r)

    def pct(xs: list[float], q: float) -> float | None:
        return xs[min(len(xs) - 1, int(q / 100 * len(xs)))] if xs else None

    return {"requests": len(reqs), "attainment": met / len(reqs) if reqs else 1.0, "slo_s": slo_s,
            "ttft_p50_s": pct(ttfts, 50), "ttft_p95_s": pct(ttfts, 95), "replica_hours": hours,
            "scale_events": len(events), "peak_replicas": peak,
            "failed": sum(1 for r in reqs if not r.get("ok")),
            "errors": sorted({str(r.get("error"))[:120] for r in reqs if not r.get("ok")})[:5],
            "send_lag_p50_s": pct(lags, 50), "send_lag_p99_s": pct(lags, 99),
            "startups_s": startups, "startup_median_s": statistics.median(startups) if startups else None,
            "events": events, "decisions_held": sum(1 for d in decisions if d["to"] == d["from"]),
            "holds_no_data": sum(1 for d in decisions if d["reason"].startswith("hold:no_data")),
            "first_decisions": decisions[:8],
            "timeline": [s for s in samples if round(s["t"]) % 5 == 0]}


def run(kind: str, seed: int, *, profile_path: str, settings: Autoscaling, bounds: Replicas, slo_s: float,
        interval_s: float, traces_dir: str, out: str, command: str, duration_s: float = TRACE_S) -> dict:
    base = EngineProfile.load(profile_path)
    profile = dilated(base, DILATION)
    trace = traces.generate(kind, seed, profile, duration_s)
    Path(traces_dir).mkdir(parents=True, exist_ok=True)
    trace_path = Path(traces_dir) / f"{kind}-seed{seed}-{duration_s:g}s-dilated{DILATION:g}.jsonl"
    traces.write(trace_path, trace)
    s = sized(settings, profile, trace).model_copy(update={"drain_timeout_s": 120.0})
    load_before = os.getloadavg()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="owc-autoscaling-real-") as tmp:
        real = real_run(trace_path, trace, profile, s, bounds, slo_s=slo_s, interval_s=interval_s, tmp=Path(tmp))
    took = time.time() - t0
    sim = simulated(trace, profile, s, bounds, slo_s=slo_s, interval_s=interval_s,
                    measured_startup_s=real["startup_median_s"])
    report = {
        "what": "one trace on a real local Ray Serve cluster (owc gateway, capacity controller, Prometheus) "
                "and in the simulator, same settings",
        "command": command, "created_unix": int(t0), "wall_s": round(took, 1), "git": _git(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg(),
                    "note": "2 cores shared with other work running at the same time: a noisy machine"},
        "trace": {"kind": kind, "seed": seed, "duration_s": duration_s, "tail_s": TAIL_S, "requests": len(trace),
                  "sha256_16": digest(trace_path), "file": trace_path.name},
        "engine": {"kind": "loadtests/profiled_engine.py (the simulator's replica model), not vLLM",
                   "profile": profile_path, "dilation": DILATION, "dilated_profile": asdict(profile),
                   "startup_s": profile.startup_s},
        "bounds": bounds.model_dump(), "slo_s": slo_s, "interval_s": interval_s, "scrape_interval_s": SCRAPE_S,
        "owc_settings": s.model_dump(),
        "real": real, "simulated": sim,
    }
    Path(out).write_text(json.dumps(report, indent=1) + "\n")
    return report


def _git() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"head": git("rev-parse", "--short", "HEAD"),
            "uncommitted_files": len(git("status", "--porcelain", "--untracked-files=no").splitlines())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="loadtests.autoscaling_real")
    sub = p.add_subparsers(dest="cmd", required=True)
    ld = sub.add_parser("load", help="(internal) replay a trace against a gateway")
    ld.add_argument("--url", required=True)
    ld.add_argument("--trace", required=True)
    ld.add_argument("--start", type=float, required=True)
    ld.add_argument("--out", required=True)
    a = p.parse_args(argv)
    asyncio.run(_replay(a.url, a.trace, a.start, a.out))


if __name__ == "__main__":
    main()
