"""Replay a request trace against a queueing model of engine replicas under a scaling
policy: owc's (cluster.capacity.policy), Ray Serve's default autoscaling, or a KEDA-style
threshold on `vllm:num_requests_waiting`.

The replica model comes from a measured engine profile (cluster.capacity.profile): up to
``max_num_seqs`` requests run at once; each tick a replica spends its time first on
prefill (``prefill_tokens_per_s``, in arrival order) and the rest on decode steps whose
length grows with the batch (``decode_step_base_s + decode_step_per_seq_s * batch``). A
new replica serves after ``startup_s``; a replica leaving is drained (no new requests,
finishes its own) and counts until it stops. The gateway sends each request to the ready
replica with the fewest interactive requests, and holds requests while no replica is ready.

Mixed traffic: a batch backlog (``simulate(batch=)``) is the lowest priority: its lines run
only in slots no interactive request wants, an interactive request preempts a running line
(vLLM's priority scheduling: the line is recomputed later), and it is in no load signal
the policies see (``View.batch_waiting`` apart). ``SimResult.utilization`` is the share of
engine slots busy over the replica-hours paid for.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster.capacity.policy import ARRIVAL_WINDOW_S
from cluster.capacity.sim_policies import KedaThreshold, OwcPolicy, RayServeDefault, ScalingPolicy, View

__all__ = ["EngineProfile", "KedaThreshold", "OwcPolicy", "RayServeDefault", "ScalingPolicy", "SimResult", "TraceRequest",
           "View", "load_trace", "plot", "simulate"]


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
    batch: bool = False
    decoding_from: float = 0.0  # prefilled (again, after a preemption) at


@dataclass
class _Replica:
    ready_at: float
    waiting: deque = field(default_factory=deque)
    running: list = field(default_factory=list)
    draining: bool = False
    stopped: bool = False

    batch: int = 0  # batch lines among running

    def interactive(self) -> int:
        return len(self.waiting) + len(self.running) - self.batch


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
    utilization: float = 0.0  # busy engine slots (running / max_num_seqs) over replica time, batch lines included
    batch_requests: int = 0
    batch_done: int = 0
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
    batch: Sequence[TraceRequest] = (),
) -> SimResult:
    """``batch``: lines of a batch backlog (each available from its ``t``), served in idle
    slots only, preempted by interactive requests, excluded from every load signal; lines
    not done by the end of the trace's tail count as ``batch_unfinished``."""
    replicas = [_Replica(ready_at=0.0) for _ in range(initial)]
    held: deque = deque()
    backlog: deque = deque()
    reqs: list[_Req] = []
    first_tokens: deque = deque()  # (t, ttft) of the last minute
    arrivals_window: deque = deque()
    recent: deque = deque()  # arrivals of the last ARRIVAL_WINDOW_S
    end = (trace[-1].t if trace else 0.0) + tail_s
    i, j, t, next_decision = 0, 0, 0.0, 0.0
    replica_s, busy_slot_s, events, timeline = 0.0, 0.0, [], []
    next_sample, arrivals_since = 0.0, 0
    peak, batch_done = initial, 0

    def active() -> list[_Replica]:
        return [r for r in replicas if not r.draining and not r.stopped]

    while t < end or held or any(r.interactive() for r in replicas):
        if t > end + 3600:  # a policy that never serves the backlog: stop, count the rest unserved
            break
        while i < len(trace) and trace[i].t <= t:
            q = trace[i]
            reqs.append(_Req(arrival=q.t, prompt=q.prompt, output=q.output, prefill_left=q.prompt,
                             decode_left=max(0, q.output - 1)))
            held.append(reqs[-1])
            arrivals_window.append(q.t)
            recent.append(q.t)
            arrivals_since += 1
            i += 1
        while j < len(batch) and batch[j].t <= t:
            q = batch[j]
            backlog.append(_Req(arrival=q.t, prompt=q.prompt, output=q.output, prefill_left=q.prompt,
                                decode_left=max(0, q.output - 1), batch=True))
            j += 1
        ready = [r for r in replicas if not r.draining and not r.stopped and r.ready_at <= t]
        while held and ready:
            min(ready, key=_Replica.interactive).waiting.append(held.popleft())
        for r in replicas:
            if r.stopped or r.ready_at > t:
                continue
            _admit(r, profile.max_num_seqs, backlog, t < end and not r.draining)
            busy_slot_s += dt * len(r.running) / profile.max_num_seqs
            for q in _serve(r, profile, t, dt, first_tokens):
                batch_done += q.batch
            if r.draining and not r.running and not r.waiting:
                r.stopped = True
        replica_s += dt * sum(1 for r in replicas if not r.stopped)
        while first_tokens and first_tokens[0][0] < t - 60:
            first_tokens.popleft()
        while arrivals_window and arrivals_window[0] < t - 60:
            arrivals_window.popleft()
        while recent and recent[0] < t - ARRIVAL_WINDOW_S:
            recent.popleft()
        if t >= next_decision:
            live = [r for r in replicas if not r.stopped and r.ready_at <= t and not r.draining]
            kv = [sum(q.prompt + q.output - max(0.0, q.decode_left) for q in r.running if not q.batch)
                  / profile.kv_capacity_tokens for r in live]
            view = View(
                t=t, target=len(active()), ready=len([r for r in active() if r.ready_at <= t]),
                ongoing=len(held) + sum(r.interactive() for r in replicas), waiting=sum(len(r.waiting) for r in replicas),
                kv_usage=sum(kv) / len(kv) if kv else 0.0,
                ttft_p95_s=_pct([x for _, x in first_tokens], 95) if len(first_tokens) >= 5 else None,
                request_rate=len(arrivals_window) / 60.0,
                arrival_rate=len(recent) / ARRIVAL_WINDOW_S,
                batch_waiting=len(backlog),
            )
            if on_tick:
                on_tick(t, view)
            want = policy.target(view)
            if want != view.target:
                events.append({"t": round(t, 1), "from": view.target, "to": want})
                if want > view.target:
                    replicas.extend(_Replica(ready_at=t + profile.startup_s) for _ in range(want - view.target))
                else:
                    leaving = sorted(active(), key=lambda r: (r.ready_at <= t, r.interactive()))[: view.target - want]
                    for r in leaving:
                        r.draining = True
                        held.extendleft(reversed(r.waiting))  # not started there: back to the gateway
                        r.waiting.clear()
                        for q in [q for q in r.running if q.batch]:  # batch lines go back to the backlog
                            r.running.remove(q)
                            backlog.appendleft(_preempted(q))
                        r.batch = 0
                        if not r.running:
                            r.stopped = True
            peak = max(peak, len(active()))
            next_decision = t + policy.interval_s
        if t >= next_sample:
            timeline.append({"t": round(t, 1), "arrivals_per_s": arrivals_since / 10.0,
                             "ongoing": len(held) + sum(r.interactive() for r in replicas),
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
        utilization=busy_slot_s / replica_s if replica_s else 0.0,
        batch_requests=len(batch), batch_done=batch_done,
    )


def _admit(r: _Replica, slots: int, backlog: deque, take_batch: bool) -> None:
    """Interactive requests first: into free slots, then into slots a batch line held (the
    line preempted, back to the backlog's front); batch lines only into slots left idle."""
    while r.waiting:
        if len(r.running) < slots:
            r.running.append(r.waiting.popleft())
            continue
        if not r.batch:
            break
        victim = next(q for q in reversed(r.running) if q.batch)
        r.running.remove(victim)
        r.batch -= 1
        backlog.appendleft(_preempted(victim))
    while take_batch and backlog and len(r.running) < slots:
        r.running.append(backlog.popleft())
        r.batch += 1


def _preempted(q: _Req) -> _Req:
    """A preempted line is recomputed: its prompt and the tokens it had made, prefilled again."""
    made = max(0.0, q.output - 1 - q.decode_left)
    return _Req(arrival=q.arrival, prompt=q.prompt, output=q.output, prefill_left=q.prompt + made,
                decode_left=q.decode_left, first_token=q.first_token, batch=q.batch)


def _serve(r: _Replica, profile: EngineProfile, t: float, dt: float, first_tokens: deque) -> list[_Req]:
    """One tick of a replica: prefill (interactive first, then in arrival order), then decode
    steps for the rest of the tick. Returns the requests it finished."""
    budget = dt
    for req in sorted(r.running, key=lambda q: q.batch) if r.batch else r.running:
        if budget <= 0:
            break
        if req.prefill_left > 0:
            use = min(req.prefill_left / profile.prefill_tokens_per_s, budget)
            req.prefill_left -= use * profile.prefill_tokens_per_s
            budget -= use
            if req.prefill_left <= 1e-9:
                req.prefill_left = 0
                if req.first_token is None:
                    req.first_token = t + (dt - budget)
                    if not req.batch:
                        first_tokens.append((req.first_token, req.first_token - req.arrival))
                req.decoding_from = t + (dt - budget)
    decoding = [q for q in r.running if q.prefill_left == 0 and q.decoding_from <= t + dt]
    if decoding and budget > 0:
        steps = budget / profile.step_s(len(decoding))
        for q in decoding:
            q.decode_left -= steps
    done, keep = [], []
    for q in r.running:
        if q.prefill_left == 0 and q.decode_left <= 0:
            q.done = t + dt
            done.append(q)
            r.batch -= q.batch
        else:
            keep.append(q)
    r.running = keep
    return done


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
