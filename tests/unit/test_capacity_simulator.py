"""The simulator: the queueing model behaves like a replica pool, the baselines follow
their documented rules, and `owc simulate` writes its report and plot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cluster.capacity import traces
from cluster.capacity.simulator import (
    EngineProfile, KedaThreshold, OwcPolicy, RayServeDefault, ScalingPolicy, TraceRequest, View, load_trace, simulate,
)
from cluster.config.schema import Autoscaling, Replicas

PROFILE = EngineProfile(max_num_seqs=8, prefill_tokens_per_s=10_000, decode_step_base_s=0.01,
                        decode_step_per_seq_s=0.001, startup_s=10, kv_capacity_tokens=16_000)
BOUNDS = Replicas(min=1, max=6)


def constant(rate: float, seconds: float, start: float = 0.0, prompt: int = 100, output: int = 50):
    n = int(rate * seconds)
    return [TraceRequest(start + i / rate, prompt, output) for i in range(n)]


class Fixed(ScalingPolicy):
    name = "fixed"

    def __init__(self, n):
        self.n = n

    def target(self, v: View) -> int:
        return self.n


def test_service_follows_the_profile():
    # one request alone: prefill 100 tokens (10 ms) then 49 decode steps of 11 ms, on 0.2 s ticks
    r = simulate([TraceRequest(0.0, 100, 50)], PROFILE, Fixed(1), slo_s=1.0)
    assert r.requests == 1 and r.attainment == 1.0 and r.ttft_p50_s <= 0.2
    # a replica's capacity at a full batch: 8 / (50 x 18 ms) ~ 8.9 req/s (+ prefill)
    assert PROFILE.capacity_rps(100, 50) == pytest.approx(1 / (0.01 + 50 * 0.018 / 8), rel=1e-6)


def test_overload_queues_and_misses_the_slo_more_replicas_fix_it():
    load = constant(rate=20, seconds=60)  # ~2.3 replicas' worth
    one, three = (simulate(load, PROFILE, Fixed(n), slo_s=1.0, initial=n) for n in (1, 3))
    assert one.attainment < 0.5 < 0.99 <= three.attainment
    assert three.replica_hours == pytest.approx(3 * three.timeline[-1]["t"] / 3600, rel=0.05)


def test_every_request_finishes_through_scale_downs():
    load = constant(rate=20, seconds=60) + constant(rate=2, seconds=300, start=60)
    s = Autoscaling(enabled=True, target_ongoing_per_replica=4, up_cooldown_s=0, down_cooldown_s=0,
                    down_stabilization_s=20)
    r = simulate(load, PROFILE, OwcPolicy(s, BOUNDS, interval_s=5), slo_s=5.0)
    ups = [e for e in r.events if e["to"] > e["from"]]
    downs = [e for e in r.events if e["to"] < e["from"]]
    assert ups and ups[0]["t"] <= 5 and downs and r.peak_replicas >= 3
    assert r.timeline[-1]["replicas"] == 1 and r.timeline[-1]["ongoing"] == 0
    assert r.requests == len(load) and r.unfinished == 0


def test_ray_serve_default_waits_its_upscale_delay():
    load = constant(rate=20, seconds=90)
    r = simulate(load, PROFILE, RayServeDefault(BOUNDS), slo_s=1.0)
    assert r.events[0]["t"] >= 30 and r.events[0]["to"] > 1


def test_keda_threshold_scales_on_the_waiting_queue():
    k = KedaThreshold(BOUNDS, threshold=4)
    view = View(t=0, target=1, ready=1, ongoing=30, waiting=22, kv_usage=0.5, ttft_p95_s=None, request_rate=1)
    assert k.target(view) == 5  # ceil(22 / 4) = 6, at most +max(4, 100%) per period
    # down: the highest recommendation of the last 300 s
    quiet = View(t=100, target=5, ready=5, ongoing=0, waiting=0, kv_usage=0, ttft_p95_s=None, request_rate=0)
    assert k.target(quiet) == 5
    assert k.target(View(**{**quiet.__dict__, "t": 401})) == 1


def test_traces_are_seeded_and_shaped(tmp_path):
    a, b = (traces.generate("bursty", 1, PROFILE, 900) for _ in range(2))
    assert a == b and a != traces.generate("bursty", 2, PROFILE, 900)
    unit = PROFILE.capacity_rps(traces.PROMPT_MEAN, traces.OUTPUT_MEAN)
    per_min = [sum(1 for r in a if m * 60 <= r.t < (m + 1) * 60) / 60 / unit for m in range(2, 15)]
    assert max(per_min) > 2.5 * min(per_min)  # bursts
    steady = traces.generate("steady", 1, PROFILE, 900)
    rate = sum(1 for r in steady if r.t >= 120) / 780 / unit
    assert 2.2 < rate < 2.8
    path = tmp_path / "t.jsonl"
    traces.write(path, a)
    assert load_trace(path) == a


def test_owc_simulate_command(tmp_path):
    prof = tmp_path / "profile.json"
    prof.write_text(json.dumps(PROFILE.__dict__))
    trace = tmp_path / "burst.jsonl"
    traces.write(trace, constant(rate=2, seconds=60) + constant(rate=25, seconds=30, start=60))
    cfg = tmp_path / "owc.yaml"
    cfg.write_text("models:\n  m:\n    source: demo:tiny-llama\n    replicas: {min: 1, max: 4}\n")
    r = subprocess.run([sys.executable, "-m", "cluster.cli", "simulate", "--trace", str(trace), "--profile", str(prof),
                        "--config", str(cfg), "--out", str(tmp_path / "out"), "--keda-thresholds", "2,8"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "out" / "burst.json").read_text())
    assert [x["policy"] for x in report["results"]][:2] == ["owc", "ray-serve-default"]
    assert len(report["keda_sweep"]) == 2 and (tmp_path / "out" / "burst.png").stat().st_size > 1000
