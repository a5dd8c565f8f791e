"""Autoscaling policies compared in the simulator (`make bench`):

    python -m loadtests.autoscaling --out loadtests/results/autoscaling-bursts.json

One owc setting (``OWC``: burst sizing on, 3 replicas of standing headroom; chosen by hand on
seed 1 of the steady, diurnal and bursty traces) is replayed next to Ray Serve's default
autoscaling (untuned: target_ongoing_requests=2, upscale delay 30 s, downscale delay 600 s)
and the KEDA threshold sweep (its best threshold on each trace itself) on traces it was not
tuned on: seed 2 of steady, diurnal and bursty (the traces of the committed
autoscaling.json, same hashes) and, generated after the setting was fixed, diurnal seed 3
and spiky seed 3. Per trace: SLO attainment, replica-hours, scale events, peak and engine
utilisation per policy; owc's replica-hours against the better baseline reaching 97 %.

Then: a mixed replay (the bursty trace plus a batch backlog: it must change no scaling
decision without a budget, and raise utilisation; with ``batch_max_replicas`` it may hold
that many), the sensitivity to GPU-scale replica start-up (60/120/180 s, every policy
starting warm at replicas.max: the least standing headroom reaching 99 % on each trace, and
its replica-hours), and how long a 15-minute trace
takes to replay under all policies. Traces go to ``--traces-dir`` (ignored by git; their
hashes are in the JSON). No Ray here: this is the simulator only.

``--real KIND --seed N`` instead serves one trace on a real local Ray Serve cluster (owc's
gateway, the capacity controller with this setting, a real Prometheus; engines shaped by the
engine profile, not vLLM) and replays it in the simulator with the same settings
(loadtests/autoscaling_real.py; ~13 minutes):

    python -m loadtests.autoscaling --real bursty --seed 3 --out loadtests/results/autoscaling-real.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from cluster.capacity import traces
from cluster.capacity.replay import Comparison, Setup, compare, digest, owc_only
from cluster.capacity.simulator import EngineProfile, SimResult, TraceRequest, plot, simulate
from cluster.capacity.sim_policies import KedaThreshold, RayServeDefault
from cluster.config.schema import Autoscaling, Replicas

BOUNDS = Replicas(min=1, max=12)
OWC = Autoscaling(enabled=True, target_ongoing_per_replica=32, target_queue_per_replica=2, ttft_slo_s=0.5,
                  up_cooldown_s=10, down_cooldown_s=60, down_stabilization_s=60, max_step_up=4, max_step_down=12,
                  target_utilization=0.8, standing_headroom=3)
OWC_INTERVAL_S = 5.0
TUNED_ON = [("steady", 1), ("diurnal", 1), ("bursty", 1)]
REPORTED = [("steady", 2), ("diurnal", 2), ("bursty", 2), ("diurnal", 3), ("spiky", 3)]
HELD_OUT_NEW = [("diurnal", 3), ("spiky", 3)]  # generated only after OWC was fixed
STARTUPS_S = (60.0, 120.0, 180.0)
BATCH_LINES = 20_000  # the mixed replay's backlog, all there at t=0


def row(r: SimResult) -> dict:
    return {**r.summary(), "events": r.events}


def verdict(c: Comparison) -> dict:
    better = c.better_baseline(0.97)
    ratio = c.owc.replica_hours / better.replica_hours if better else None
    return {"better_baseline": better.policy if better else None, "owc_replica_hours_ratio": ratio,
            "met": c.owc.attainment >= 0.99 and (ratio is None or ratio <= 0.75)}


def mixed(trace: list[TraceRequest], setup: Setup, rng_seed: int) -> dict:
    mix = traces.generate("steady", rng_seed, setup.profile, 600.0)[:BATCH_LINES]  # a steady trace's sizes
    lines = [TraceRequest(0.0, r.prompt, r.output) for r in mix]
    alone = owc_only(trace, setup)
    with_batch = owc_only(trace, setup, batch=lines)
    budget = replace(setup, settings=setup.settings.model_copy(update={"batch_max_replicas": BOUNDS.max}))
    budgeted = owc_only(trace, budget, batch=lines)
    return {"batch_lines": len(lines), "interactive_only": row(alone), "with_batch_no_budget": row(with_batch),
            "with_batch_budget": {"batch_max_replicas": BOUNDS.max, **row(budgeted)},
            "same_decisions_without_budget": alone.events == with_batch.events,
            "utilisation_raised": with_batch.utilization > alone.utilization}


def sensitivity(trace: list[TraceRequest], setup: Setup) -> list[dict]:
    """Every policy starts warm, at replicas.max: from one replica, the traces' opening ramp
    (0 to full load in 2 minutes) outruns any start-up of 60 s or more, whatever the headroom."""
    out = []
    for startup in STARTUPS_S:
        prof = replace(setup.profile, startup_s=startup)
        s = replace(setup, profile=prof, initial=BOUNDS.max)
        base = [simulate(trace, prof, RayServeDefault(BOUNDS), slo_s=s.slo_s, initial=s.initial)]
        base += [simulate(trace, prof, KedaThreshold(BOUNDS, x), slo_s=s.slo_s, initial=s.initial)
                 for x in s.keda_thresholds]
        tried = []
        for headroom in range(BOUNDS.max):
            r = owc_only(trace, replace(s, settings=s.settings.model_copy(update={"standing_headroom": headroom})))
            tried.append({"standing_headroom": headroom, "attainment": r.attainment, "replica_hours": r.replica_hours,
                          "scale_events": r.scale_events, "peak_replicas": r.peak_replicas})
            if r.attainment >= 0.99:
                break
        ok = [b for b in base if b.attainment >= 0.97]
        better = min(ok, key=lambda b: b.replica_hours) if ok else None
        out.append({"startup_s": startup, "initial_replicas": s.initial, "owc_by_headroom": tried,
                    "needed_headroom": tried[-1]["standing_headroom"] if tried[-1]["attainment"] >= 0.99 else None,
                    "baselines": [b.summary() for b in base],
                    "better_baseline": better.summary() if better else None})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="loadtests.autoscaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="loadtests/results/engine-profile.json")
    p.add_argument("--duration", type=float, default=1800.0)
    p.add_argument("--slo", type=float, default=1.0, help="TTFT SLO, seconds")
    p.add_argument("--traces-dir", default="loadtests/traces")
    p.add_argument("--skip-sensitivity", action="store_true")
    p.add_argument("--real", choices=traces.KINDS, help="serve one trace of this shape on a real local Ray cluster, "
                   "next to the simulator (loadtests/autoscaling_real.py)")
    p.add_argument("--seed", type=int, default=3, help="--real: the trace's seed")
    p.add_argument("--real-duration", type=float, default=600.0, help="--real: the trace's length, seconds")
    p.add_argument("--out", default=None, help="default: loadtests/results/autoscaling-bursts.json "
                   "(--real: autoscaling-real.json)")
    a = p.parse_args(argv)
    if a.real:
        from loadtests import autoscaling_real

        cmd = "python -m loadtests.autoscaling " + " ".join(argv if argv is not None else sys.argv[1:])
        r = autoscaling_real.run(a.real, a.seed, profile_path=a.profile, settings=OWC, bounds=BOUNDS, slo_s=a.slo,
                                 interval_s=OWC_INTERVAL_S, traces_dir=a.traces_dir,
                                 out=a.out or "loadtests/results/autoscaling-real.json", command=cmd,
                                 duration_s=a.real_duration)
        print(json.dumps({k: r["real"][k] for k in ("attainment", "replica_hours", "scale_events", "peak_replicas")}),
              json.dumps({k: r["simulated"]["owc"][k] for k in ("attainment", "replica_hours", "scale_events",
                                                                "peak_replicas")}), flush=True)
        return
    a.out = a.out or "loadtests/results/autoscaling-bursts.json"
    profile = EngineProfile.load(a.profile)
    setup = Setup(profile, OWC, BOUNDS, slo_s=a.slo, initial=BOUNDS.min, owc_interval_s=OWC_INTERVAL_S)
    Path(a.traces_dir).mkdir(parents=True, exist_ok=True)

    def trace(kind: str, seed: int, duration: float = a.duration) -> tuple[list[TraceRequest], str]:
        path = Path(a.traces_dir) / f"{kind}-seed{seed}-{duration:g}s.jsonl"
        t = traces.generate(kind, seed, profile, duration)
        traces.write(path, t)
        return t, digest(path)

    report: dict = {"profile": a.profile, "slo_s": a.slo, "duration_s": a.duration, "bounds": BOUNDS.model_dump(),
                    "owc_settings": OWC.model_dump(), "owc_interval_s": OWC_INTERVAL_S,
                    "tuned_on": [f"{k}-seed{s}" for k, s in TUNED_ON],
                    "held_out_generated_after_tuning": [f"{k}-seed{s}" for k, s in HELD_OUT_NEW],
                    "traces": {}, "tuning_seeds": {}}
    for kind, seed in TUNED_ON:
        t, h = trace(kind, seed)
        r = owc_only(t, setup)
        report["tuning_seeds"][f"{kind}-seed{seed}"] = {"sha256_16": h, "owc": r.summary()}
    for kind, seed in REPORTED:
        t, h = trace(kind, seed)
        c = compare(t, setup)
        name = f"{kind}-seed{seed}"
        png = Path(a.out).with_name(f"autoscaling-bursts-{name}.png")
        plot(c.rows, png, f"{name} (not tuned on)")
        report["traces"][name] = {"requests": len(t), "sha256_16": h, "results": [row(r) for r in c.rows],
                                  "keda_sweep": [r.summary() for r in c.sweep], "owc_burst_sizing": {
                                      "replica_capacity_rps": c.settings.replica_capacity_rps,
                                      "replica_startup_s": c.settings.replica_startup_s},
                                  **verdict(c), "plot": png.name}
        print(name, [(r.policy, round(r.attainment, 4), round(r.replica_hours, 3), r.scale_events, r.peak_replicas)
                     for r in c.rows], flush=True)
    bursty, h = trace("bursty", 2)
    report["mixed"] = {"trace": "bursty-seed2", "sha256_16": h, **mixed(bursty, setup, 99)}
    print("mixed", {k: v for k, v in report["mixed"].items() if not isinstance(v, dict)}, flush=True)
    short, h = trace("bursty", 4, 900.0)
    t0 = time.perf_counter()
    compare(short, setup)
    report["replay_15min"] = {"trace": "bursty-seed4-900s", "sha256_16": h, "requests": len(short),
                              "seconds_all_policies": time.perf_counter() - t0}
    if not a.skip_sensitivity:
        report["sensitivity"] = {}
        for kind, seed in REPORTED:
            t, _ = trace(kind, seed)
            report["sensitivity"][f"{kind}-seed{seed}"] = sensitivity(t, setup)
            print("sensitivity", kind, seed, [(x["startup_s"], x["needed_headroom"]) for x in
                                               report["sensitivity"][f"{kind}-seed{seed}"]], flush=True)
    Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
