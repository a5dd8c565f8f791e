"""The gateway's capacity policy: a pure function from the gateway processes' own signals to
the number of `owc-gateway` processes (Ray Serve replicas), within gateway.replicas
[min, max]. No I/O, no clock.

Signals: the requests the gateway processes work on — in flight less those the fair queue
holds (they wait for engines, not for gateways) — summed over processes, and the worst
event-loop lag of any process. Up at once (after ``up_cooldown_s``) to the processes the
requests need at ``target_in_flight_per_replica`` each, or one more when some event loop
lags beyond ``max_loop_lag_s``. Down only once a lower count was wanted without a break
for ``down_stabilization_s`` (and ``down_cooldown_s`` after the last scale-down), to the
most processes the requests needed in that window. A lower count is wanted while the
requests fit it and no loop lags beyond half its bound (removing a process adds its load
to the others' loops). Missing or stale in-flight signals hold; a missing lag signal is no
lag signal (in-flight alone decides).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from cluster.capacity.policy import Decision, PolicyState, into_bounds
from cluster.capacity.windows import trailing_window
from cluster.config.gateway import GatewayAutoscaling, GatewayReplicas

GATEWAY = "owc-gateway"  # the gateway's Serve deployment (cluster.gateway.edge.deployment), and its `model` label
STALE_AFTER_S = 60.0  # in-flight samples older than this count as missing: hold
LAG_DOWN_FRACTION = 0.5  # a lower count is wanted only while every loop lags less than this share of its bound


@dataclass(frozen=True)
class GatewaySignals:
    """The gateway processes' load as read (from Prometheus) at time ``at``. None: not available."""

    at: float
    in_flight: float | None  # requests the processes work on: in flight less fair-queue held, all processes
    loop_lag_s: float | None = None  # worst event-loop lag of any process; None: no lag signal


def lower_need(sig: GatewaySignals, *, current: int, settings: GatewayAutoscaling,
               bounds: GatewayReplicas) -> int | None:
    """The scale-down window's condition: the requests fit fewer than ``current`` processes
    (above min) and every loop is well within its bound. Then the processes they need."""
    if sig.in_flight is None or current <= bounds.min:
        return None
    if sig.loop_lag_s is not None and sig.loop_lag_s > settings.max_loop_lag_s * LAG_DOWN_FRACTION:
        return None
    need = max(1, math.ceil(max(0.0, sig.in_flight) / settings.target_in_flight_per_replica))
    return need if need < current else None


def decide(
    signals: GatewaySignals | None, *, current: int, settings: GatewayAutoscaling, bounds: GatewayReplicas,
    state: PolicyState, now: float, stale_after_s: float = STALE_AFTER_S,
) -> Decision:
    """``current``: the gateway processes in force (starting ones count: they are coming)."""
    s = settings
    if (back := into_bounds(current, bounds, state, now)) is not None:
        return back
    if signals is None or signals.in_flight is None or now - signals.at > stale_after_s:
        return Decision(current, "hold:no_data", replace(state, low_since=None))

    desired = math.ceil(max(0.0, signals.in_flight) / s.target_in_flight_per_replica)
    lagging = signals.loop_lag_s is not None and signals.loop_lag_s > s.max_loop_lag_s
    pressure = "load" if desired > current else "loop_lag" if lagging else None
    if pressure is not None:
        state = replace(state, low_since=None)
        if current >= bounds.max:
            return Decision(current, f"hold:at_max:{pressure}", state)
        if state.last_up is not None and now - state.last_up < s.up_cooldown_s:
            return Decision(current, f"hold:up_cooldown:{pressure}", state)
        target = min(bounds.max, max(desired, current + 1))
        return Decision(target, f"up:{pressure}", replace(state, last_up=now))

    need = lower_need(signals, current=current, settings=s, bounds=bounds)
    if need is None:
        return Decision(current, "hold:steady", replace(state, low_since=None))
    low_since = state.low_since if state.low_since is not None else now
    peak = need if state.low_since is None else max(need, state.low_peak)
    state = replace(state, low_since=low_since, low_peak=peak)
    if now - low_since < s.down_stabilization_s:
        return Decision(current, "hold:down_stabilizing", state)
    if state.last_down is not None and now - state.last_down < s.down_cooldown_s:
        return Decision(current, "hold:down_cooldown", state)
    lower = max(bounds.min, peak)
    if lower >= current:
        return Decision(current, "hold:steady", replace(state, low_since=None))
    return Decision(lower, "down:low_load", replace(state, last_down=now))


def history_s(settings: GatewayAutoscaling) -> float:
    return settings.down_stabilization_s


def rebuild(
    history: Sequence[tuple[float, GatewaySignals]], *, current: int, settings: GatewayAutoscaling,
    bounds: GatewayReplicas, now: float, step_s: float, last_up: float | None = None, last_down: float | None = None,
    stale_after_s: float = STALE_AFTER_S,
) -> PolicyState:
    """A new leader's state: the scale-down window from the history (see
    cluster.capacity.policy.rebuild), the cooldowns from the Lease."""
    fresh = [(t, x) for t, x in history if x.in_flight is not None and t - x.at <= stale_after_s]
    low = trailing_window([(t, lower_need(x, current=current, settings=settings, bounds=bounds)) for t, x in fresh],
                          now=now, max_gap_s=1.5 * step_s)
    return PolicyState(last_up=last_up, last_down=last_down, low_since=low.since, low_peak=low.peak)
