"""Issue 29, must-show 5 on a real local Ray Serve cluster: a batch backlog alone scales
nothing up, and a scale-down while batch lines run loses none.

    python -m loadtests.batch_capacity --out loadtests/results/batch-capacity.json   # ~10 minutes

The cluster is loadtests/autoscaling_real.py's (reused, not copied): owc's gateway (one
process, or ``--gateways N`` sharing the batches through Redis; batch runners on), the engine
deployment under the capacity controller (cluster.capacity.controller acting through Serve,
every ``INTERVAL_S``) reading a real
Prometheus (`owc monitor`, 5-s scrapes), a local redis-server as the gateway's store (batch
records, leases and usage records). The engines are loadtests/profiled_engine.py (the
simulator's replica model of the committed engine profile, per-token times x20), not vLLM.

Phases: (a) a batch of ``--lines`` /v1/completions lines is submitted with no interactive
load, and for ``--alone`` seconds the run samples the replicas (every second), the
controller's decisions and the batch backlog it reads (``owc_batch_lines_waiting``), and the
batch's progress; (b) then an interactive load (streamed completions at ``--load-x`` times one
replica's capacity, for ``--load-s`` seconds) makes the controller scale up; once it stops the
controller scales down step by step, each step draining a replica while batch lines run on it
(sampled from each replica's own /metrics: after the interactive load has ended every request
an engine runs is a batch line). The run ends once the batch is done and the replicas are back
at the minimum. Checked: the replicas stayed at the minimum in (a) while the batch progressed
(with ``--batch-max-replicas N``: went to N and no further, the backlog's budget);
(b) scaled up to 2+ and down again with batch lines running on a drained replica; the batch
completed with exactly one output line per custom_id, all 200, no error file; the usage
records count each line once (``batch:<model>``'s requests = the lines).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from cluster.capacity.replay import sized
from cluster.capacity.simulator import EngineProfile, TraceRequest
from cluster.config.schema import Autoscaling, Replicas
from loadtests.autoscaling_real import DILATION, MODEL, SCRAPE_S, _config, _git, _monitor, controller_on, dilated

INTERVAL_S = 5.0  # the controller's decisions (loadtests/autoscaling.py's OWC_INTERVAL_S)
BOUNDS = Replicas(min=1, max=3)
# loadtests/autoscaling.py's OWC, with no standing headroom (the minimum is the floor to watch)
# and short down windows so the scale-down comes while the batch runs.
SETTINGS = Autoscaling(enabled=True, target_ongoing_per_replica=32, target_queue_per_replica=2, ttft_slo_s=0.5,
                       up_cooldown_s=10, down_cooldown_s=30, down_stabilization_s=30, max_step_up=4,
                       max_step_down=1, target_utilization=0.8, standing_headroom=0)
PROMPT, OUTPUT = 100, 100  # an interactive request's tokens
LINE_PROMPT = 50


def batch_input(n: int, output: int) -> bytes:
    return b"".join(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/completions",
                                "body": {"model": MODEL, "prompt": f"l{i} " + "x " * (LINE_PROMPT - 1),
                                         "max_tokens": output}}).encode() + b"\n" for i in range(n))


def interactive(rate: float, duration_s: float) -> list[TraceRequest]:
    return [TraceRequest(i / rate, PROMPT, OUTPUT) for i in range(int(rate * duration_s))]


def _running(url: str, key: str | None) -> int | None:
    """Requests the engine at ``url`` runs or holds waiting (its own gauges)."""
    from cluster.routing.stats import parse_vllm_metrics

    try:
        r = httpx.get(f"{url}/metrics", timeout=1.0, headers={"Authorization": f"Bearer {key}"} if key else {})
        s = parse_vllm_metrics(r.text)
        return int(s.running + s.waiting)
    except (httpx.HTTPError, ValueError):
        return None


def _lines_done(prom: str) -> int | None:
    """Batch lines the gateway processes have answered (owc_batch_lines_total, every outcome, as
    Prometheus last scraped it): the batch's progress while it runs."""
    try:
        r = httpx.get(f"{prom}/api/v1/query", params={"query": "sum(owc_batch_lines_total)"}, timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return None
    found = r.get("data", {}).get("result", [])
    return int(float(found[0]["value"][1])) if found else 0


def _usage(url: str) -> list[dict]:
    import asyncio

    from cluster.tenancy.redis_store import RedisStore

    async def read() -> list[dict]:
        store = RedisStore(url)
        try:
            return await store.usage()
        finally:
            await store.close()

    return asyncio.run(read())


def real_run(profile: EngineProfile, settings: Autoscaling, *, lines: int, line_output: int, lines_in_flight: int,
             gateways: int, alone_s: float, load_x: float, load_s: float, max_s: float, tmp: Path) -> dict:
    from ray import serve

    from cluster.capacity.actuators import serve_deployment
    from cluster.config.loader import parse_config
    from cluster.process import free_port
    from cluster.runner import LocalCluster
    from loadtests.profiled_engine import profiled_launcher

    from cluster.capacity import traces

    rate = load_x * profile.capacity_rps(PROMPT, OUTPUT)
    trace = interactive(rate, load_s)
    trace_path = tmp / "interactive.jsonl"
    traces.write(trace_path, trace)
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    doc = _config(tmp, profile, settings, BOUNDS)
    doc["models"][MODEL]["engine_kwargs"] = {"max_num_seqs": profile.max_num_seqs}  # known slots: batch_class
    doc["gateway"]["store"] = {"url": redis_url}
    if gateways > 1:  # as owc serve runs them: one API port, each process a metrics port of its own
        doc["gateway"].update({"replicas": gateways, "metrics_port": None})
    doc["batch"] = {"store_dir": str(tmp / "batch"), "poll_period_s": 0.5, "lines_in_flight": lines_in_flight}
    cluster = LocalCluster(parse_config(doc), launcher=profiled_launcher, temp_dir=tempfile.mkdtemp(prefix="owc-bc-"))
    cluster.start(ready_timeout_s=300)
    samples: list[dict] = []
    decisions: list[dict] = []
    drained: dict[str, list[dict]] = collections.defaultdict(list)  # replica -> (t, running) while draining
    try:
        with _monitor(cluster.cfg.model_dump(mode="json"), tmp) as prom, httpx.Client(base_url=cluster.url,
                                                                                      timeout=30) as api:
            actuator, signals, ctl = controller_on(cluster.cfg, prom, INTERVAL_S)
            registry = serve.get_deployment_handle("owc-registry", app_name="owc")
            dep = serve_deployment(MODEL)
            f = api.post("/v1/files", files={"file": ("lines.jsonl", batch_input(lines, line_output))},
                         data={"purpose": "batch"})
            f.raise_for_status()
            b = api.post("/v1/batches", json={"input_file_id": f.json()["id"], "endpoint": "/v1/completions",
                                              "completion_window": "24h"})
            b.raise_for_status()
            batch_id = b.json()["id"]
            start = time.time()
            load_start = start + alone_s
            gen = None
            next_decision, batch, fetched = 0.0, b.json(), -2.0
            while True:
                t = time.time() - start
                if gen is None and t >= alone_s:
                    gen = subprocess.Popen([sys.executable, "-m", "loadtests.autoscaling_real", "load", "--url",
                                            cluster.url, "--trace", str(trace_path), "--start", f"{load_start:.3f}",
                                            "--out", str(tmp / "interactive.json")])
                load_done = gen is not None and gen.poll() is not None
                states = serve.status().applications["owc"].deployments[dep].replica_states
                states = {str(getattr(k, "value", k)): v for k, v in states.items()}
                eps = [e for e in registry.snapshot.remote().result() if e.model == MODEL]
                on = {e.replica_id[-8:]: {"draining": e.draining, "running": _running(e.url, cluster.engine_key)}
                      for e in eps}
                if load_done:  # every request an engine runs now is a batch line
                    for rid, x in on.items():
                        if x["draining"]:
                            drained[rid].append({"t": round(t, 1), "running": x["running"]})
                if t - fetched >= 2 or batch["status"] == "finalizing":
                    batch, fetched = api.get(f"/v1/batches/{batch_id}").json(), t
                samples.append({"t": round(t, 1), "phase": "batch alone" if gen is None else
                                "interactive load" if not load_done else "load ended",
                                "replicas": sum(states.values()), "running": states.get("RUNNING", 0),
                                "engines": on, "batch_status": batch["status"],
                                "lines_done": _lines_done(prom)})
                if t >= next_decision:
                    current = actuator.replicas(MODEL)[0]
                    seen = signals.read(MODEL)
                    d = ctl.reconcile_once().get(MODEL)
                    if d is not None:
                        decisions.append({"t": round(t, 1), "from": current, "to": d.target, "reason": d.reason,
                                          "batch_queue": seen.batch_queue if seen else None,
                                          "ongoing": seen.ongoing if seen else None,
                                          "arrival_rate": seen.arrival_rate if seen else None})
                    next_decision += INTERVAL_S
                finished = batch["status"] in ("completed", "failed", "expired", "cancelled")
                if (finished and load_done and sum(states.values()) == BOUNDS.min) or t > max_s:
                    break
                time.sleep(max(0.0, 1.0 - (time.time() - start - t)))
            if gen is not None and gen.poll() is None:
                gen.wait(timeout=600)
            output = _rows(api, batch.get("output_file_id"))
            errors = _rows(api, batch.get("error_file_id"))
            usage = _usage(redis_url)
            reqs = json.loads((tmp / "interactive.json").read_text()) if (tmp / "interactive.json").exists() else []
    finally:
        cluster.stop()
    return summarise(samples, decisions, dict(drained), batch, output, errors, usage, reqs, lines=lines,
                     alone_s=alone_s, rate=rate, load_s=load_s)


def _rows(api: httpx.Client, file_id: str | None) -> list[dict]:
    if not file_id:
        return []
    r = api.get(f"/v1/files/{file_id}/content")
    r.raise_for_status()
    return [json.loads(x) for x in r.text.splitlines() if x.strip()]


def summarise(samples: list[dict], decisions: list[dict], drained: dict[str, list[dict]], batch: dict,
              output: list[dict], errors: list[dict], usage: list[dict], reqs: list[dict], *, lines: int,
              alone_s: float, rate: float, load_s: float) -> dict:
    alone = [s for s in samples if s["phase"] == "batch alone"]
    alone_decisions = [d for d in decisions if d["t"] < alone_s]
    ids = collections.Counter(r["custom_id"] for r in output)
    expected = {f"line-{i}" for i in range(lines)}
    batch_usage = [u for u in usage if u["model"] == f"batch:{MODEL}"]
    events = [d for d in decisions if d["to"] != d["from"]]
    drains = {rid: {"first_seen_t": xs[0]["t"], "batch_lines_running_first": xs[0]["running"],
                    "batch_lines_running_max": max((x["running"] or 0) for x in xs), "samples": xs}
              for rid, xs in drained.items()}
    return {
        "batch_alone": {
            "seconds": alone_s, "replicas_min": min((s["replicas"] for s in alone), default=None),
            "replicas_max": max((s["replicas"] for s in alone), default=None), "samples": len(alone),
            "decisions": len(alone_decisions),
            "decision_reasons": dict(collections.Counter(d["reason"] for d in alone_decisions)),
            "batch_queue_read_max": max((d["batch_queue"] or 0 for d in alone_decisions), default=None),
            "lines_done_at_end": alone[-1]["lines_done"] if alone else None,
            "scaled_up": any(d["to"] > d["from"] for d in alone_decisions),
            "decided_max": max((d["to"] for d in alone_decisions), default=None),
        },
        "interactive": {"rate_rps": round(rate, 3), "seconds": load_s, "requests": len(reqs),
                        "failed": sum(1 for r in reqs if not r.get("ok"))},
        "scale_events": events,
        "peak_replicas": max(s["replicas"] for s in samples),
        "drained_replicas": drains,
        "drains_with_batch_lines_running": sum(1 for d in drains.values() if (d["batch_lines_running_first"] or 0) > 0),
        "batch": {"status": batch["status"], "request_counts": batch["request_counts"], "lines": lines,
                  "output_lines": len(output), "distinct_custom_ids": len(ids),
                  "custom_ids_twice": sorted(k for k, v in ids.items() if v > 1),
                  "custom_ids_missing": sorted(expected - set(ids))[:20],
                  "output_not_200": sum(1 for r in output if (r.get("response") or {}).get("status_code") != 200),
                  "error_lines": len(errors), "errors_first": errors[:3],
                  "usage_records": batch_usage,
                  "usage_requests": sum(u["requests"] for u in batch_usage),
                  "completed_at_t": next((s["t"] for s in samples if s["batch_status"] == "completed"), None)},
        "decisions": decisions,
        "timeline": [{k: v for k, v in s.items()} for s in samples[::2]],
    }


def alone_target(budget: int) -> int:
    """The replicas a batch backlog alone should hold: the minimum, or its budget if more."""
    return max(BOUNDS.min, min(BOUNDS.max, budget))


def verdict(real: dict, budget: int) -> dict:
    a, b = real["batch_alone"], real["batch"]
    return {
        "batch_alone_held_the_minimum_or_its_budget": a["replicas_max"] == alone_target(budget)
        and a["decided_max"] == alone_target(budget),
        "batch_progressed_alone": (a["lines_done_at_end"] or 0) > 0,
        "controller_saw_the_backlog": (a["batch_queue_read_max"] or 0) > 0,
        "interactive_scaled_up_to_2_plus": real["peak_replicas"] >= 2,
        "a_drain_ran_batch_lines": real["drains_with_batch_lines_running"] > 0,
        "batch_completed": b["status"] == "completed",
        "one_output_line_per_custom_id": b["output_lines"] == b["distinct_custom_ids"] == b["lines"]
        and not b["custom_ids_missing"],
        "no_error_lines": b["error_lines"] == 0 and b["output_not_200"] == 0,
        "charged_once": b["usage_requests"] == b["lines"],
    }


def run(args: argparse.Namespace, command: str) -> dict:
    profile = dilated(EngineProfile.load(args.profile), DILATION)
    s = sized(SETTINGS, profile, [TraceRequest(0.0, PROMPT, OUTPUT)]).model_copy(
        update={"drain_timeout_s": 120.0, "batch_max_replicas": args.batch_max_replicas})
    load_before = os.getloadavg()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="owc-batch-capacity-") as tmp:
        real = real_run(profile, s, lines=args.lines, line_output=args.line_output,
                        lines_in_flight=args.lines_in_flight, gateways=args.gateways, alone_s=args.alone, load_x=args.load_x,
                        load_s=args.load_s, max_s=args.max_s, tmp=Path(tmp))
    report = {
        "what": "issue 29 must-show 5: a batch backlog alone scales nothing up; a scale-down while batch lines "
                "run loses none (real local Ray Serve, owc gateway with its batch runner, capacity controller, "
                "Prometheus; profiled engines, not vLLM)",
        "command": command, "created_unix": int(t0), "wall_s": round(time.time() - t0, 1), "git": _git(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg(),
                    "note": "2 cores shared with other work running at the same time: a noisy machine"},
        "engine": {"kind": "loadtests/profiled_engine.py (the simulator's replica model), not vLLM",
                   "profile": args.profile, "dilation": DILATION, "max_num_seqs": profile.max_num_seqs,
                   "replica_capacity_rps": s.replica_capacity_rps},
        "bounds": BOUNDS.model_dump(), "interval_s": INTERVAL_S, "scrape_interval_s": SCRAPE_S,
        "owc_settings": s.model_dump(), "batch_max_replicas": s.batch_max_replicas,
        "batch_lines": {"lines": args.lines, "prompt_words": LINE_PROMPT, "max_tokens": args.line_output,
                        "lines_in_flight": args.lines_in_flight, "gateway_processes": args.gateways},
        "real": real,
    }
    report["verdict"] = verdict(real, args.batch_max_replicas)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="loadtests.batch_capacity", description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="cluster/capacity/engine-profile.json")
    p.add_argument("--lines", type=int, default=300)
    p.add_argument("--line-output", type=int, default=200, help="max_tokens of each batch line")
    p.add_argument("--lines-in-flight", type=int, default=12, help="batch.lines_in_flight")
    p.add_argument("--gateways", type=int, default=1, help="gateway processes (owc serve's default: 2)")
    p.add_argument("--alone", type=float, default=90.0, help="seconds of the batch alone")
    p.add_argument("--load-x", type=float, default=1.8, help="interactive rate, in one replica's capacity")
    p.add_argument("--load-s", type=float, default=60.0)
    p.add_argument("--batch-max-replicas", type=int, default=0,
                   help="autoscaling.batch_max_replicas (0: the backlog holds none; N: it keeps up to N)")
    p.add_argument("--max-s", type=float, default=900.0, help="the run stops after this long in any case")
    p.add_argument("--out", default="loadtests/results/batch-capacity.json")
    a = p.parse_args(argv)
    r = run(a, "python -m loadtests.batch_capacity " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(json.dumps({"verdict": r["verdict"], "batch_alone": r["real"]["batch_alone"],
                      "scale_events": r["real"]["scale_events"], "batch": {k: r["real"]["batch"][k] for k in (
                          "status", "output_lines", "error_lines", "usage_requests", "completed_at_t")},
                      "drains": {k: {x: v[x] for x in ("first_seen_t", "batch_lines_running_first",
                                                       "batch_lines_running_max")}
                                 for k, v in r["real"]["drained_replicas"].items()}}, indent=1))
    with contextlib.suppress(Exception):
        sys.stdout.flush()


if __name__ == "__main__":
    main()
