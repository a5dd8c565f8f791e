"""Replay a request trace against a queueing model of engine replicas under a scaling
policy: owc's (cluster.capacity.policy), Ray Serve's default autoscaling, or a KEDA-style
threshold on `vllm:num_requests_waiting`.

The replica model comes from a measured engine profile (cluster.capacity.profile): up to
``max_num_seqs`` requests run at once; each tick a replica spends its time first on
prefill (``prefill_tokens_per_s``, in arrival order) and the rest on decode steps whose
length grows with the batch (``decode_step_base_s + decode_step_per_seq_s * batch``). A
new replica serves after ``startup_s``; a replica leaving is drained (no new requests,
finishes its own) and counts until it stops. The gateway sends each request to the ready
replica with the fewest requests, and holds requests while no replica is ready.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster.capacity.policy import PolicyState, Signals, decide
from cluster.config.schema import Autoscaling, Replicas


@dataclass(frozen=True)
class EngineProfile:
    max_num_seqs: int
    prefill_tokens_per_s: float
    decode_step_base_s: float
    decode_step_per_seq_s: float
    startup_s: float
    kv_capacity_tokens: int
    measured: str = ""

    @classmethod
    def load(cls, path: str | Path) -> EngineProfile:
        data = json.loads(Path(path).read_text())
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def step_s(self, batch: int) -> float:
        return self.decode_step_base_s + self.decode_step_per_seq_s * batch

    def capacity_rps(self, prompt: float, output: float) -> float:
        """Requests per second one replica sustains at a full batch."""
        per_request = prompt / self.prefill_tokens_per_s + output * self.step_s(self.max_num_seqs) / self.max_num_seqs
        return 1.0 / per_request


@dataclass(frozen=True)
class TraceRequest:
    t: float
    prompt: int
    output: int


def load_trace(path: str | Path) -> list[TraceRequest]:
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            out.append(TraceRequest(float(d["t"]), int(d["prompt_tokens"]), int(d["output_tokens"])))
    return sorted(out, key=lambda r: r.t)


@dataclass
class _Req:
    arrival: float
    prompt: int
    output: int
    prefill_left: float = 0.0
    decode_left: float = 0.0
    first_token: float | None = None
    done: float | None = None


@dataclass
class _Replica:
    ready_at: float
    waiting: deque = field(default_factory=deque)
    running: list = field(default_factory=list)
    draining: bool = False
    stopped: bool = False

    def load(self) -> int:
        return len(self.waiting) + len(self.running)


@dataclass
class View:
    """What a scaling policy may see at time t."""

    t: float
    target: int  # replicas asked for (starting + ready, not draining)
    ready: int
    ongoing: int  # held + waiting + running
    waiting: int  # in engine queues
    kv_usage: float
    ttft_p95_s: float | None
    request_rate: float


class ScalingPolicy(ABC):
    """A scaling policy the simulator consults every ``interval_s``."""

    name = "policy"
    interval_s = 15.0

    @abstractmethod
    def target(self, v: View) -> int:
        """The replica target given what the policy can see now."""


class OwcPolicy(ScalingPolicy):
    def __init__(self, settings: Autoscaling, bounds: Replicas, *, interval_s: float = 15.0, name: str = "owc"):
        self.settings, self.bounds, self.interval_s, self.name = settings, bounds, interval_s, name
        self.state = PolicyState()

    def target(self, v: View) -> int:
        sig = Signals(at=v.t, ongoing=v.ongoing, queue=v.waiting, kv_usage=v.kv_usage, ttft_p95_s=v.ttft_p95_s,
                      request_rate=v.request_rate)
        d = decide(sig, current=v.target, settings=self.settings, bounds=self.bounds, state=self.state, now=v.t)
        self.state = d.state
        return d.target


class RayServeDefault(ScalingPolicy):
    """Ray Serve's default request-based autoscaling: desired = ceil(mean ongoing requests
    over ``look_back_s`` / ``target_ongoing_requests``), applied once the wish has held
    ``upscale_delay_s`` (up) or ``downscale_delay_s`` (down)."""

    interval_s = 1.0

    def __init__(self, bounds: Replicas, *, target_ongoing_requests: float = 2.0, upscale_delay_s: float = 30.0,
                 downscale_delay_s: float = 600.0, look_back_s: float = 30.0):
        self.bounds, self.target_ongoing = bounds, target_ongoing_requests
        self.up_delay, self.down_delay, self.look_back = upscale_delay_s, downscale_delay_s, look_back_s
        self.name = "ray-serve-default"
        self._samples: deque = deque()
        self._want_since: tuple[str, float] | None = None

    def target(self, v: View) -> int:
        self._samples.append((v.t, v.ongoing))
        while self._samples and self._samples[0][0] < v.t - self.look_back:
            self._samples.popleft()
        mean = sum(x for _, x in self._samples) / len(self._samples)
        desired = min(self.bounds.max, max(self.bounds.min, math.ceil(mean / self.target_ongoing)))
        direction = "up" if desired > v.target else "down" if desired < v.target else None
        if direction is None:
            self._want_since = None
            return v.target
        if self._want_since is None or self._want_since[0] != direction:
            self._want_since = (direction, v.t)
        delay = self.up_delay if direction == "up" else self.down_delay
        if v.t - self._want_since[1] >= delay:
            self._want_since = None
            return desired
        return v.target


class KedaThreshold(ScalingPolicy):
    """KEDA's Prometheus scaler on sum(vllm:num_requests_waiting) with an AverageValue
    ``threshold`` under the HPA defaults: desired = ceil(waiting / threshold) every 15 s,
    up at once (at most max(4, 100 %) per period), down to the highest recommendation of
    the last 300 s."""

    def __init__(self, bounds: Replicas, threshold: float, *, stabilization_s: float = 300.0):
        self.bounds, self.threshold, self.stabilization_s = bounds, threshold, stabilization_s
        self.name = f"keda-waiting>{threshold:g}"
        self._recs: deque = deque()

    def target(self, v: View) -> int:
        desired = min(self.bounds.max, max(self.bounds.min, math.ceil(v.waiting / self.threshold)))
        self._recs.append((v.t, desired))
        while self._recs and self._recs[0][0] < v.t - self.stabilization_s:
            self._recs.popleft()
        if desired > v.target:
            return min(desired, v.target + max(4, v.target))
        return min(v.target, max(d for _, d in self._recs))


@dataclass
class SimResult:
    policy: str
    requests: int
    slo_s: float
    attainment: float  # share of requests whose TTFT met the SLO (unserved ones did not)
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    replica_hours: float
    scale_events: int
    peak_replicas: int
    unfinished: int = 0  # requests not done when the simulation ended
    timeline: list[dict] = field(default_factory=list)  # t, arrivals/s, ongoing, replicas (every 10 s)
    events: list[dict] = field(default_factory=list)  # t, from, to

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("timeline")
        d.pop("events")
        return d


def _pct(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]


def simulate(
    trace: Sequence[TraceRequest], profile: EngineProfile, policy: ScalingPolicy, *, slo_s: float,
    initial: int = 1, dt: float = 0.2, tail_s: float = 120.0, on_tick: Callable[[float, View], None] | None = None,
) -> SimResult:
    replicas = [_Replica(ready_at=0.0) for _ in range(initial)]
    held: deque = deque()
    reqs: list[_Req] = []
    first_tokens: deque = deque()  # (t, ttft) of the last minute
    arrivals_window: deque = deque()
    end = (trace[-1].t if trace else 0.0) + tail_s
    i, t, next_decision = 0, 0.0, 0.0
    replica_s, events, timeline = 0.0, [], []
    next_sample, arrivals_since = 0.0, 0
    peak = initial

    def active() -> list[_Replica]:
        return [r for r in replicas if not r.draining and not r.stopped]

    while t < end or any(r.load() for r in replicas) or held:
        if t > end + 3600:  # a policy that never serves the backlog: stop, count the rest unserved
            break
        while i < len(trace) and trace[i].t <= t:
            q = trace[i]
            req = _Req(arrival=q.t, prompt=q.prompt, output=q.output, prefill_left=q.prompt,
                       decode_left=max(0, q.output - 1))
            reqs.append(req)
            held.append(req)
            arrivals_window.append(q.t)
            arrivals_since += 1
            i += 1
        ready = [r for r in replicas if not r.draining and not r.stopped and r.ready_at <= t]
        while held and ready:
            min(ready, key=_Replica.load).waiting.append(held.popleft())
        for r in replicas:
            if r.stopped or r.ready_at > t:
                continue
            while r.waiting and len(r.running) < profile.max_num_seqs:
                r.running.append(r.waiting.popleft())
            budget = dt
            for req in r.running:
                if budget <= 0:
                    break
                if req.prefill_left > 0:
                    need = req.prefill_left / profile.prefill_tokens_per_s
                    use = min(need, budget)
                    req.prefill_left -= use * profile.prefill_tokens_per_s
                    budget -= use
                    if req.prefill_left <= 1e-9:
                        req.prefill_left = 0
                        req.first_token = t + (dt - budget)
                        first_tokens.append((req.first_token, req.first_token - req.arrival))
            decoding = [q for q in r.running if q.prefill_left == 0 and q.first_token is not None and q.first_token <= t + dt]
            if decoding and budget > 0:
                steps = budget / profile.step_s(len(decoding))
                for q in decoding:
                    q.decode_left -= steps
            keep = []
            for q in r.running:
                if q.prefill_left == 0 and q.decode_left <= 0:
                    q.done = t + dt
                else:
                    keep.append(q)
            r.running = keep
            if r.draining and not r.load():
                r.stopped = True
        replica_s += dt * sum(1 for r in replicas if not r.stopped)
        while first_tokens and first_tokens[0][0] < t - 60:
            first_tokens.popleft()
        while arrivals_window and arrivals_window[0] < t - 60:
            arrivals_window.popleft()
        if t >= next_decision:
            live = [r for r in replicas if not r.stopped and r.ready_at <= t]
            kv = [sum(q.prompt + q.output - max(0.0, q.decode_left) for q in r.running) / profile.kv_capacity_tokens
                  for r in live if not r.draining]
            view = View(
                t=t, target=len(active()), ready=len([r for r in active() if r.ready_at <= t]),
                ongoing=len(held) + sum(r.load() for r in replicas), waiting=sum(len(r.waiting) for r in replicas),
                kv_usage=sum(kv) / len(kv) if kv else 0.0,
                ttft_p95_s=_pct([x for _, x in first_tokens], 95) if len(first_tokens) >= 5 else None,
                request_rate=len(arrivals_window) / 60.0,
            )
            if on_tick:
                on_tick(t, view)
            want = policy.target(view)
            if want != view.target:
                events.append({"t": round(t, 1), "from": view.target, "to": want})
                if want > view.target:
                    replicas.extend(_Replica(ready_at=t + profile.startup_s) for _ in range(want - view.target))
                else:
                    leaving = sorted(active(), key=lambda r: (r.ready_at <= t, r.load()))[: view.target - want]
                    for r in leaving:
                        r.draining = True
                        held.extendleft(reversed(r.waiting))  # not started there: back to the gateway
                        r.waiting.clear()
                        if not r.running:
                            r.stopped = True
            peak = max(peak, len(active()))
            next_decision = t + policy.interval_s
        if t >= next_sample:
            timeline.append({"t": round(t, 1), "arrivals_per_s": arrivals_since / 10.0,
                             "ongoing": len(held) + sum(r.load() for r in replicas),
                             "replicas": sum(1 for r in replicas if not r.stopped)})
            arrivals_since = 0
            next_sample = t + 10.0
        t += dt
    ttfts = [q.first_token - q.arrival for q in reqs if q.first_token is not None]
    met = sum(1 for x in ttfts if x <= slo_s)
    return SimResult(
        policy=policy.name, requests=len(reqs), slo_s=slo_s, attainment=met / len(reqs) if reqs else 1.0,
        ttft_p50_s=_pct(ttfts, 50), ttft_p95_s=_pct(ttfts, 95), replica_hours=replica_s / 3600.0,
        scale_events=len(events), peak_replicas=peak, timeline=timeline, events=events,
        unfinished=sum(1 for q in reqs if q.done is None),
    )


def plot(results: Sequence[SimResult], path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    base = results[0].timeline
    ax1.plot([p["t"] / 60 for p in base], [p["arrivals_per_s"] for p in base], color="grey")
    ax1.set_ylabel("arrivals / s")
    ax1.set_title(title)
    for r in results:
        ax2.step([p["t"] / 60 for p in r.timeline], [p["replicas"] for p in r.timeline], where="post",
                 label=f"{r.policy}: {r.attainment * 100:.1f}% in SLO, {r.replica_hours:.2f} replica-h")
    ax2.set_ylabel("replicas")
    ax2.set_xlabel("minutes")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
