"""Seeded request traces for the simulator (JSON lines: t, prompt_tokens, output_tokens).
Rates are in units of one replica's capacity under the given engine profile, so the same
shapes load a CPU demo engine and a GPU engine alike. Each opens with a 2-minute ramp.

- steady: Poisson at 2.5 replicas' worth.
- diurnal: a compressed day — the rate swings from 0.3 to 4 replicas' worth and back.
- bursty: 0.8 replicas' worth with bursts to 5x that (40-120 s long, ~every 6 min).
- spiky: 1 replica's worth with spikes to 4x that (10-30 s long, ~every 4 min): spikes
  shorter than a GPU replica's start-up.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from cluster.capacity.simulator import EngineProfile, TraceRequest

KINDS = ("steady", "diurnal", "bursty", "spiky")
PROMPT_MEAN, OUTPUT_MEAN = 512, 128


RAMP_S = 120.0  # every trace opens with a linear ramp from zero (the replicas start at the minimum)


def _rate_fn(kind: str, duration_s: float, rng: random.Random):
    shape = _shape(kind, duration_s, rng)
    return lambda t: shape(t) * min(1.0, t / RAMP_S)


def _shape(kind: str, duration_s: float, rng: random.Random):
    if kind == "steady":
        return lambda t: 2.5
    if kind == "diurnal":
        return lambda t: 0.3 + 3.7 * (0.5 - 0.5 * math.cos(2 * math.pi * t / duration_s))
    if kind == "bursty":
        bursts = _windows(rng, duration_s, lengths=(40, 120), mean_gap_s=360)
        return lambda t: 4.0 if any(a <= t < b for a, b in bursts) else 0.8
    if kind == "spiky":
        spikes = _windows(rng, duration_s, lengths=(10, 30), mean_gap_s=240)
        return lambda t: 4.0 if any(a <= t < b for a, b in spikes) else 1.0
    raise ValueError(f"unknown trace kind {kind!r}; one of {', '.join(KINDS)}")


def generate(kind: str, seed: int, profile: EngineProfile, duration_s: float = 3600.0) -> list[TraceRequest]:
    rng = random.Random(f"{kind}-{seed}")
    unit = profile.capacity_rps(PROMPT_MEAN, OUTPUT_MEAN)
    rate = _rate_fn(kind, duration_s, rng)
    peak = 5.0 * unit
    out, t = [], 0.0
    while True:  # thinning: a Poisson process at the peak rate, kept with probability rate(t)/peak
        t += rng.expovariate(peak)
        if t >= duration_s:
            return out
        if rng.random() < rate(t) * unit / peak:
            prompt = max(16, int(rng.lognormvariate(math.log(PROMPT_MEAN), 0.5)))
            output = max(4, int(rng.lognormvariate(math.log(OUTPUT_MEAN), 0.6)))
            out.append(TraceRequest(round(t, 3), prompt, output))


def write(path: str | Path, trace: list[TraceRequest]) -> None:
    Path(path).write_text("".join(json.dumps({"t": r.t, "prompt_tokens": r.prompt, "output_tokens": r.output}) + "\n"
                                  for r in trace))


def _windows(rng, duration_s: float, *, lengths: tuple[float, float], mean_gap_s: float) -> list[tuple[float, float]]:
    """High-rate windows: the first 60-240 s in, each of a uniform length within ``lengths``,
    exponential gaps of mean ``mean_gap_s`` (the same draws, in the same order, as before)."""
    windows, t = [], rng.uniform(60, 240)
    while t < duration_s:
        length = rng.uniform(*lengths)
        windows.append((t, t + length))
        t += length + rng.expovariate(1 / mean_gap_s)
    return windows
