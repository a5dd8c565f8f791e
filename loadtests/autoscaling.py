"""Autoscaling policies compared in the simulator (`make bench`):

    python -m loadtests.autoscaling --out loadtests/results/autoscaling.json

For each trace shape (steady, diurnal, bursty) two seeded traces are generated from the
measured engine profile (loadtests/results/engine-profile.json): seed 1 tunes, seed 2
reports. On the tuning seed, owc's `target_ongoing_per_replica` × `down_stabilization_s` ×
`max_step_up` (controller every 5 s) and the KEDA threshold on `vllm:num_requests_waiting` are swept; each keeps its cheapest setting (fewest
replica-hours) that meets the SLO for ≥ 99 % of requests (else its best attainment). Ray
Serve's default autoscaling is not tuned (target_ongoing_requests=2, upscale delay 30 s,
downscale delay 600 s). The held-out seed is then replayed under the three chosen
policies; PNGs of replicas vs load go next to the JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from cluster.capacity import traces
from cluster.capacity.simulator import EngineProfile, KedaThreshold, OwcPolicy, RayServeDefault, plot, simulate
from cluster.config.schema import Autoscaling, Replicas

BOUNDS = Replicas(min=1, max=12)
# target_ongoing_per_replica, down_stabilization_s, max_step_up
OWC_GRID = [(t, d, u) for t in (8, 16, 32) for d in (180, 600) for u in (4, 12)]
OWC_INTERVAL_S = 5.0
KEDA_THRESHOLDS = (1, 2, 4, 8, 16, 32)


def owc_settings(setting: tuple[float, float, int]) -> Autoscaling:
    target, down_s, step = setting
    return Autoscaling(enabled=True, target_ongoing_per_replica=target, target_queue_per_replica=2, ttft_slo_s=0.5,
                       up_cooldown_s=10, down_cooldown_s=60, down_stabilization_s=down_s, max_step_up=step)


def owc_policy(setting: tuple[float, float, int]) -> OwcPolicy:
    return OwcPolicy(owc_settings(setting), BOUNDS, interval_s=OWC_INTERVAL_S)


def pick(results: list, key_setting: list) -> tuple:
    ok = [(r, s) for r, s in zip(results, key_setting) if r.attainment >= 0.99]
    if ok:
        return min(ok, key=lambda x: x[0].replica_hours)
    return max(zip(results, key_setting), key=lambda x: (x[0].attainment, -x[0].replica_hours))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="loadtests.autoscaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="loadtests/results/engine-profile.json")
    p.add_argument("--duration", type=float, default=1800.0)
    p.add_argument("--slo", type=float, default=1.0, help="TTFT SLO, seconds")
    p.add_argument("--tune-seed", type=int, default=1)
    p.add_argument("--report-seed", type=int, default=2)
    p.add_argument("--traces-dir", default="loadtests/traces")
    p.add_argument("--out", default="loadtests/results/autoscaling.json")
    a = p.parse_args(argv)
    profile = EngineProfile.load(a.profile)
    Path(a.traces_dir).mkdir(parents=True, exist_ok=True)
    report: dict = {"profile": a.profile, "slo_s": a.slo, "duration_s": a.duration, "bounds": BOUNDS.model_dump(),
                    "tune_seed": a.tune_seed, "report_seed": a.report_seed, "traces": {}}
    for kind in traces.KINDS:
        tr = {}
        for seed in (a.tune_seed, a.report_seed):
            t = traces.generate(kind, seed, profile, a.duration)
            path = Path(a.traces_dir) / f"{kind}-seed{seed}.jsonl"
            traces.write(path, t)
            tr[seed] = (t, hashlib.sha256(path.read_bytes()).hexdigest()[:16])
        tune, _ = tr[a.tune_seed]
        owc_runs = [simulate(tune, profile, owc_policy(x), slo_s=a.slo) for x in OWC_GRID]
        keda_runs = [simulate(tune, profile, KedaThreshold(BOUNDS, x), slo_s=a.slo) for x in KEDA_THRESHOLDS]
        best_owc, owc_setting = pick(owc_runs, list(OWC_GRID))
        best_keda, keda_threshold = pick(keda_runs, list(KEDA_THRESHOLDS))
        held, digest = tr[a.report_seed]
        final = [
            simulate(held, profile, owc_policy(owc_setting), slo_s=a.slo),
            simulate(held, profile, RayServeDefault(BOUNDS), slo_s=a.slo),
            simulate(held, profile, KedaThreshold(BOUNDS, keda_threshold), slo_s=a.slo),
        ]
        png = Path(a.out).with_name(f"autoscaling-{kind}.png")
        plot(final, png, f"{kind} trace, seed {a.report_seed} (held out)")
        baselines = final[1:]
        ok = [b for b in baselines if b.attainment >= final[0].attainment - 1e-9]
        better = min(ok, key=lambda b: b.replica_hours) if ok else max(baselines, key=lambda b: b.attainment)
        report["traces"][kind] = {
            "requests": len(held), "sha256_16": digest,
            "tuning": {"owc": [{"target_ongoing_per_replica": x[0], "down_stabilization_s": x[1], "max_step_up": x[2],
                                **r.summary()} for x, r in zip(OWC_GRID, owc_runs)],
                       "keda": [{"threshold": x, **r.summary()} for x, r in zip(KEDA_THRESHOLDS, keda_runs)],
                       "owc_chosen": {"target_ongoing_per_replica": owc_setting[0],
                                      "down_stabilization_s": owc_setting[1], "max_step_up": owc_setting[2],
                                      "interval_s": OWC_INTERVAL_S},
                       "keda_threshold": keda_threshold},
            "held_out": [r.summary() for r in final],
            "better_baseline": better.policy,
            "replica_hours_saving_vs_better_baseline": 1 - final[0].replica_hours / better.replica_hours,
            "plot": png.name,
        }
        print(kind, [(r.policy, round(r.attainment, 4), round(r.replica_hours, 3), r.scale_events) for r in final],
              flush=True)
    Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
