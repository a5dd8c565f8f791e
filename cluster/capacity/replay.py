"""One trace replayed under owc's policy and the baselines it is compared with (Ray Serve's
default autoscaling, the KEDA threshold sweep): what `owc simulate` and
`python -m loadtests.autoscaling` both run.

owc's burst sizing needs a replica's capacity and start-up time: where the settings leave
them unset they come from the engine profile — the capacity for the trace's own request
mix (mean prompt and output tokens), the start-up as measured.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cluster.capacity.simulator import (
    EngineProfile, KedaThreshold, OwcPolicy, RayServeDefault, SimResult, TraceRequest, simulate,
)
from cluster.config.schema import Autoscaling, Replicas

KEDA_THRESHOLDS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def digest(path: str | Path) -> str:
    """A trace file's identity in reports: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def sized(settings: Autoscaling, profile: EngineProfile, trace: Sequence[TraceRequest]) -> Autoscaling:
    """``settings`` with burst sizing's replica capacity and start-up filled in from the
    profile where they are unset."""
    update: dict = {"enabled": True}
    if settings.replica_capacity_rps is None and trace:
        prompt = sum(r.prompt for r in trace) / len(trace)
        output = sum(r.output for r in trace) / len(trace)
        update["replica_capacity_rps"] = profile.capacity_rps(prompt, output)
    if settings.replica_startup_s == 0:
        update["replica_startup_s"] = profile.startup_s
    return settings.model_copy(update=update)


@dataclass
class Comparison:
    owc: SimResult
    ray: SimResult
    keda: SimResult  # the sweep's pick: the cheapest threshold meeting 99 %, else the best attainment
    sweep: list[SimResult] = field(default_factory=list)
    settings: Autoscaling | None = None  # owc's, as replayed

    @property
    def rows(self) -> list[SimResult]:
        return [self.owc, self.ray, self.keda]

    def better_baseline(self, floor: float = 0.97) -> SimResult | None:
        """The baseline with fewer replica-hours among those within the SLO for ``floor`` of requests."""
        ok = [b for b in (self.ray, self.keda) if b.attainment >= floor]
        return min(ok, key=lambda b: b.replica_hours) if ok else None


@dataclass(frozen=True)
class Setup:
    profile: EngineProfile
    settings: Autoscaling
    bounds: Replicas
    slo_s: float = 1.0
    initial: int = 1
    owc_interval_s: float = 15.0
    keda_thresholds: Sequence[float] = KEDA_THRESHOLDS


def owc_only(trace: Sequence[TraceRequest], setup: Setup, batch: Sequence[TraceRequest] = ()) -> SimResult:
    s = sized(setup.settings, setup.profile, trace)
    return simulate(trace, setup.profile, OwcPolicy(s, setup.bounds, interval_s=setup.owc_interval_s),
                    slo_s=setup.slo_s, initial=setup.initial, batch=batch)


def compare(trace: Sequence[TraceRequest], setup: Setup, batch: Sequence[TraceRequest] = ()) -> Comparison:
    p, b = setup.profile, setup.bounds
    s = sized(setup.settings, p, trace)
    owc = simulate(trace, p, OwcPolicy(s, b, interval_s=setup.owc_interval_s), slo_s=setup.slo_s,
                   initial=setup.initial, batch=batch)
    ray = simulate(trace, p, RayServeDefault(b), slo_s=setup.slo_s, initial=setup.initial, batch=batch)
    sweep = [simulate(trace, p, KedaThreshold(b, float(x)), slo_s=setup.slo_s, initial=setup.initial, batch=batch)
             for x in setup.keda_thresholds]
    met = [r for r in sweep if r.attainment >= 0.99]
    keda = min(met, key=lambda r: r.replica_hours) if met else max(sweep, key=lambda r: r.attainment)
    return Comparison(owc=owc, ray=ray, keda=keda, sweep=sweep, settings=s)
