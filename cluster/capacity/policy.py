"""The capacity policy: a pure function from one model's signals to a replica target and a
reason. No I/O, no clock: the controller loop (cluster.capacity.controller) and the
simulator (cluster.capacity.simulator) both call it.

Up fast (at once on queueing, KV pressure, a TTFT SLO miss or more load than the replicas
are sized for; several replicas per step), and sized to a burst at its start
(``burst_need``: the arrival rate, extrapolated by its rise over a replica's start-up, plus
the engine queue drained within it, over the engine profile's capacity per replica at
``target_utilization``, plus ``standing_headroom`` replicas: one step, no cooldown); down slowly: the load must have fitted in fewer
replicas at ``down_utilization`` of the target for ``down_stabilization_s`` without a break;
then down to the most replicas it needed during that window (at most ``max_step_down`` per
step, steps ``down_cooldown_s`` apart; each step restarts the window, so the next goes to the
most replicas needed since the last — the load stays low for another
``down_stabilization_s`` first) — like the stabilization window of Kubernetes' HPA. Always within [min, max]. Missing or stale signals
hold. The batch backlog (``batch_queue``) is no load: it holds replicas only within its own
budget ``batch_max_replicas``. Scale to zero only after ``idle_to_zero_s`` without a request; a request arriving
for a model at zero wakes it at once.

``rebuild`` gives a controller that becomes leader its windows from Prometheus's history
(cluster.capacity.windows), never from what it remembered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from cluster.capacity.windows import trailing_window
from cluster.config.schema import Autoscaling, Replicas

EPS = 1e-9  # float slack: a need of exactly n replicas is n
ARRIVAL_WINDOW_S = 15.0  # arrival_rate's window (the gateway's request counter; cluster.capacity.signals)


@dataclass(frozen=True)
class Signals:
    """One model's load, as read (from Prometheus) at time ``at``. None: not available."""

    at: float
    ongoing: float | None  # requests in flight at the gateways (incl. held while waking)
    queue: float | None = None  # requests waiting in the engines' queues (sum)
    kv_usage: float | None = None  # mean KV-cache use over replicas, [0, 1]
    ttft_p95_s: float | None = None  # over the last minute
    tokens_per_s: float | None = None  # generated tokens per second (reported, not used to decide)
    request_rate: float | None = None  # requests per second over the last minute
    arrival_rate: float | None = None  # requests per second over the last ARRIVAL_WINDOW_S (burst sizing)
    batch_queue: float | None = None  # batch lines waiting (lowest priority): never load, only its budget


@dataclass(frozen=True)
class PolicyState:
    last_up: float | None = None
    last_down: float | None = None
    low_since: float | None = None  # the scale-down condition has held since
    low_peak: int = 0  # the most replicas the load needed (at down_utilization) since low_since (read only while it is set)
    idle_since: float | None = None  # no request since
    last_seen: tuple[float, float, float] | None = None  # (at, request_rate, queue) last decided on: their rise


@dataclass(frozen=True)
class Decision:
    target: int
    reason: str
    state: PolicyState

    @property
    def changed(self) -> bool:
        return not self.reason.startswith("hold")


def into_bounds(current: int, bounds, state: PolicyState, now: float) -> Decision | None:
    """Back within [bounds.min, bounds.max] at once (engines' and gateways' policies alike);
    None when ``current`` is already within them."""
    if current < bounds.min:
        return Decision(bounds.min, "up:below_min", replace(state, last_up=now, low_since=None))
    if current > bounds.max:
        return Decision(bounds.max, "down:above_max", replace(state, last_down=now, low_since=None))
    return None


def decide(
    signals: Signals | None, *, current: int, settings: Autoscaling, bounds: Replicas, state: PolicyState, now: float,
) -> Decision:
    """``current``: the replica target in force (starting replicas count: they are coming)."""
    s = settings
    if (back := into_bounds(current, bounds, state, now)) is not None:
        return back
    if signals is None or signals.ongoing is None or now - signals.at > s.stale_after_s:
        return Decision(current, "hold:no_data", replace(state, low_since=None))

    ongoing = max(0.0, signals.ongoing)
    sized = burst_need(signals, settings=s, state=state)
    if signals.request_rate is not None:
        seen = (signals.at, max(0.0, signals.request_rate), max(0.0, signals.queue or 0.0))
        state = replace(state, last_seen=seen)
    if current == 0:
        if ongoing > 0:
            return Decision(max(1, bounds.min), "up:wake", replace(state, last_up=now, idle_since=None))
        return Decision(0, "hold:zero", state)

    desired = math.ceil(ongoing / s.target_ongoing_per_replica)
    pressure = _pressure(signals, current, desired, s)
    burst = sized if sized is not None and sized > current else None
    if pressure is not None or burst is not None:
        state = replace(state, low_since=None, idle_since=None)
        if current >= bounds.max:
            return Decision(current, f"hold:at_max:{pressure or 'burst'}", state)
        stepped = 0  # the stepping rule's target: max_step_up at a time, up_cooldown_s apart
        if pressure is not None and (state.last_up is None or now - state.last_up >= s.up_cooldown_s):
            stepped = current + min(s.max_step_up, max(1, desired - current))
        if burst is None and not stepped:
            return Decision(current, f"hold:up_cooldown:{pressure}", state)
        reason = "up:burst" if (burst or 0) >= stepped else f"up:{pressure}"
        return Decision(min(bounds.max, max(burst or 0, stepped)), reason, replace(state, last_up=now))
    batch = batch_floor(signals, settings=s, bounds=bounds)
    if batch > current:
        return Decision(batch, "up:batch_budget", replace(state, last_up=now, low_since=None, idle_since=None))

    # Idle: scale to zero after idle_to_zero_s without requests.
    idle = is_idle(signals) and not batch
    state = replace(state, idle_since=(state.idle_since if state.idle_since is not None else now) if idle else None)
    if idle and bounds.min == 0 and s.idle_to_zero_s is not None and now - state.idle_since >= s.idle_to_zero_s:
        return Decision(0, "down:idle", replace(state, last_down=now, low_since=None, idle_since=None))

    floor = max(bounds.min, 1)
    need = lower_need(signals, current=current, settings=s, bounds=bounds)
    if need is not None and current > batch:
        low_since = state.low_since if state.low_since is not None else now
        peak = need if state.low_since is None else max(need, state.low_peak)
        state = replace(state, low_since=low_since, low_peak=peak)
        last_change = max((t for t in (state.last_up, state.last_down) if t is not None), default=None)
        if now - low_since < s.down_stabilization_s:
            return Decision(current, "hold:down_stabilizing", state)
        if last_change is not None and now - last_change < s.down_cooldown_s:
            return Decision(current, "hold:down_cooldown", state)
        lower = max(floor, peak, batch, current - s.max_step_down)
        # The window restarts: the next step goes to the most replicas needed after this one (an old
        # peak, e.g. a burst's tail, is not held for ever), once the load has stayed low that long again.
        return Decision(lower, "down:low_load", replace(state, last_down=now, low_since=now, low_peak=need))
    return Decision(current, "hold:steady", replace(state, low_since=None))


def is_idle(sig: Signals) -> bool:
    """No request in flight and none arriving: the idle-to-zero window's condition."""
    return sig.ongoing is not None and max(0.0, sig.ongoing) == 0 and (sig.request_rate or 0.0) == 0


def lower_need(sig: Signals, *, current: int, settings: Autoscaling, bounds: Replicas) -> int | None:
    """The scale-down window's condition: no pressure, nothing queued, TTFT within the SLO,
    and the load fits fewer than ``current`` replicas (above the floor) at
    ``down_utilization`` of the target. Then the replicas it needs; else None."""
    s = settings
    if sig.ongoing is None or current <= max(bounds.min, 1):
        return None
    ongoing = max(0.0, sig.ongoing)
    if _pressure(sig, current, math.ceil(ongoing / s.target_ongoing_per_replica), s) is not None:
        return None
    need = math.ceil(ongoing / (s.target_ongoing_per_replica * s.down_utilization))
    if s.replica_capacity_rps is not None and sig.arrival_rate is not None:  # what burst sizing would ask for now
        per_replica = s.replica_capacity_rps * s.target_utilization * s.down_utilization
        need = max(need, math.ceil(max(0.0, sig.arrival_rate) / per_replica - EPS))
    need += s.standing_headroom
    quiet = (sig.queue or 0.0) == 0 and (sig.ttft_p95_s is None or sig.ttft_p95_s <= s.ttft_slo_s)
    return need if need < current and quiet else None


def burst_need(sig: Signals, *, settings: Autoscaling, state: PolicyState) -> int | None:
    """The replicas a burst needs once the ones asked for now are up, from the arrivals:
    their rate, plus its rise (the last minute's rate, per second since the last decision)
    over a replica's start-up, plus the engine queue's growth since the last decision
    (arrivals the replicas did not take) and the queue itself drained within that start-up
    (at least one arrival window); over ``replica_capacity_rps`` at ``target_utilization``,
    plus ``standing_headroom`` replicas. None without a capacity or an arrival rate (then only
    the in-flight, queue, KV and TTFT rules scale up)."""
    s = settings
    if s.replica_capacity_rps is None or sig.arrival_rate is None:
        return None
    rate, queue = max(0.0, sig.arrival_rate), max(0.0, sig.queue or 0.0)
    rise = growth = 0.0
    if state.last_seen is not None and sig.at > state.last_seen[0]:
        at, last_rate, last_queue = state.last_seen
        if sig.request_rate is not None:
            rise = max(0.0, (sig.request_rate - last_rate) / (sig.at - at))
        growth = max(0.0, (queue - last_queue) / (sig.at - at))
    horizon = s.replica_startup_s
    wanted = rate + rise * horizon + growth + queue / max(horizon, ARRIVAL_WINDOW_S)
    return math.ceil(wanted / (s.replica_capacity_rps * s.target_utilization) - EPS) + s.standing_headroom


def batch_floor(sig: Signals, *, settings: Autoscaling, bounds: Replicas) -> int:
    """The replicas the batch backlog may hold: its budget while lines wait, else none."""
    if not sig.batch_queue or sig.batch_queue <= 0:
        return 0
    return min(bounds.max, settings.batch_max_replicas)


def history_s(settings: Autoscaling) -> float:
    """How far back the windows reach: what ``rebuild`` needs of the history."""
    return max(settings.down_stabilization_s, settings.idle_to_zero_s or 0.0)


def rebuild(
    history: Sequence[tuple[float, Signals]], *, current: int, settings: Autoscaling, bounds: Replicas, now: float,
    step_s: float, last_up: float | None = None, last_down: float | None = None,
) -> PolicyState:
    """A new leader's state: the scale-down and idle windows from the signals as Prometheus
    evaluated them at each step ``t`` of the history (``(t, signals)``, a sample counting
    only while fresh at ``t``), the cooldowns from the last scalings recorded on the Lease.
    A missing or stale step breaks a window, as a round without data does live; the
    scale-down window starts no earlier than the last scale-down, as it restarts live."""
    s = settings
    fresh = [(t, x) for t, x in history if x.ongoing is not None and t - x.at <= s.stale_after_s]
    gap = 1.5 * step_s
    since_down = [(t, x) for t, x in fresh if last_down is None or t >= last_down]  # a step down restarts it
    low = trailing_window([(t, lower_need(x, current=current, settings=s, bounds=bounds)) for t, x in since_down],
                          now=now, max_gap_s=gap)
    idle = trailing_window([(t, 0 if is_idle(x) else None) for t, x in fresh], now=now, max_gap_s=gap)
    return PolicyState(last_up=last_up, last_down=last_down, low_since=low.since, low_peak=low.peak,
                       idle_since=idle.since)


def _pressure(sig: Signals, current: int, desired: int, s: Autoscaling) -> str | None:
    if sig.queue is not None and sig.queue / current > s.target_queue_per_replica:
        return "queue"
    if sig.ttft_p95_s is not None and sig.ttft_p95_s > s.ttft_slo_s:
        return "ttft_slo"
    if sig.kv_usage is not None and sig.kv_usage > s.target_kv_usage:
        return "kv_cache"
    if desired > current:
        return "load"
    return None
