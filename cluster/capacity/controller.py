"""The capacity controller: a thin loop around the pure policies. Each round, per target
(cluster.capacity.targets: each model with ``autoscaling.enabled``, and the gateway when
gateway.replicas.max > min): read the replica target in force (actuator), read the signals
(Prometheus), decide, and apply a changed target. Its own metrics go on an injected
registry (docs/metrics.md); the gateway's carry ``model="owc-gateway"``.

Leadership: with a leader elector, only the Lease holder acts. A controller that becomes
leader (or starts, or resumes after a pause longer than a Lease) rebuilds each target's
windows from Prometheus's history (``history`` of the signals) and its cooldowns from the
scalings recorded on the Lease — never from what it remembered: it forgets its windows
whenever it is not the leader, and on every new Lease term. Before each scaling it
records the scaling on the Lease it holds (a write that fails once another pod holds it),
so a pod that lost the Lease does not act.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from cluster.capacity.actuators import Actuator, Conflict
from cluster.capacity.election import lease_duration_for
from cluster.capacity.policy import Decision, PolicyState
from cluster.capacity.targets import Target
from cluster.capacity.targets import targets as default_targets
from cluster.config.schema import OwcConfig

log = logging.getLogger(__name__)
EVENTS_ANNOTATION = "owc.io/capacity-events"  # {target: [last_up, last_down]} (Unix seconds or null)
MAX_HISTORY_POINTS = 10_000  # under Prometheus's 11,000 points per query_range series


class LostLease(Exception):
    """The Lease is no longer this controller's: stop acting."""


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.last_reconcile = Gauge(
            "owc_controller_last_reconcile_timestamp_seconds",
            "Unix time of the controller's last successful reconcile.", registry=registry)
        self.leader = Gauge("owc_controller_leader", "1 while this controller holds the Lease (or runs alone).",
                            registry=registry)
        self.target = Gauge("owc_controller_target_replicas", "Replica target the controller last decided, by model.",
                            ["model"], registry=registry)
        self.current = Gauge("owc_controller_current_replicas",
                             "Replica target in force when the controller last looked, by model.", ["model"],
                             registry=registry)
        self.decisions = Counter("owc_controller_decisions", "Policy decisions, by model and reason.",
                                 ["model", "reason"], registry=registry)
        self.errors = Counter("owc_controller_errors", "Reconcile rounds that failed for a model.", ["model"],
                              registry=registry)
        self.rebuilds = Counter(
            "owc_controller_window_rebuilds", "Windows rebuilt on becoming leader, by model and source.",
            ["model", "source"], registry=registry)
        self.hold = Gauge(
            "owc_controller_hold",
            "1 for the reason the model's last decision held (hold:<reason>), 0 for the other reasons seen.",
            ["model", "reason"], registry=registry)
        self._holds: dict[str, set[str]] = {}  # the hold reasons each model's series exist for

    def held(self, model: str, reason: str | None) -> None:
        """The model's last decision held for ``reason`` (None: it scaled, or no decision is
        this controller's to make): that series 1, every other one set before 0."""
        seen = self._holds.setdefault(model, set())
        if reason is not None:
            seen.add(reason)
        for r in seen:
            self.hold.labels(model, r).set(1 if r == reason else 0)

    def not_holding(self) -> None:
        """A follower decides nothing: every hold series 0."""
        for model in self._holds:
            self.held(model, None)


def parse_events(annotations: dict[str, str] | None) -> dict[str, tuple[float | None, float | None]]:
    """The scalings recorded on the Lease; anything unreadable counts as none recorded."""
    try:
        raw = json.loads((annotations or {}).get(EVENTS_ANNOTATION) or "{}")
        return {str(k): (_time(v[0]), _time(v[1])) for k, v in raw.items()}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return {}


def _time(v: Any) -> float | None:
    return None if v is None else float(v)


class CapacityController:
    def __init__(
        self, *, config: OwcConfig, signals: Any, actuator: Actuator, registry: CollectorRegistry,
        elector: Any = None, clock: Callable[[], float] = time.time, targets: Sequence[Target] | None = None,
        interval_s: float = 15.0,
    ):
        self._signals = signals
        self._actuator = actuator
        self._elector = elector
        self._clock = clock
        self._step = interval_s  # the history's step when windows are rebuilt
        self.metrics = ControllerMetrics(registry)
        self.targets = {t.key: t for t in (targets if targets is not None else default_targets(config))}
        self.state: dict[str, PolicyState] = {}  # only while leading: cleared on losing the Lease
        self._leading = False
        self._term: Any = None  # the elector's term this controller leads in
        self._last_lead: float | None = None  # when it last found itself leading

    @property
    def models(self) -> list[str]:
        """Every target's key: the autoscaled models, then ``owc-gateway`` where it is one."""
        return list(self.targets)

    def reconcile_once(self) -> dict[str, Decision]:
        if not self._lead():
            return {}
        out: dict[str, Decision] = {}
        ok = True
        for key, target in self.targets.items():
            try:
                if self._elector is not None and not self._elector.keep():  # a long round renews on the way
                    raise LostLease
                out[key] = self._reconcile(target)
            except LostLease:
                self._follow()
                return out
            except Conflict as e:
                log.info("%s: the object changed underneath (%s); next round", key, e)
            except Exception:
                ok = False
                self.metrics.errors.labels(key).inc()
                log.exception("reconcile of %s failed", key)
        if ok:
            self.metrics.last_reconcile.set(self._clock())
        return out

    def _lead(self) -> bool:
        """Leading this round? A new lead — the first, one after following, a new Lease term
        (this pod lost the Lease, or let it lapse, without a round to notice), or a pause
        longer than a Lease — starts with no windows: they are rebuilt from history."""
        if self._elector is not None and not self._elector.is_leader():
            self._follow()
            return False
        now = self._clock()
        term = getattr(self._elector, "term", None)
        paused = self._last_lead is not None and now - self._last_lead > lease_duration_for(self._step)
        if not self._leading or term != self._term or paused:
            log.info("leading: windows are rebuilt from Prometheus's history, cooldowns from the Lease")
            self.state.clear()
            self._leading, self._term = True, term
        self._last_lead = now
        self.metrics.leader.set(1)
        return True

    def _follow(self) -> None:
        if self._leading:
            log.info("not the leader any more: forgetting every window")
        self._leading = False
        self.state.clear()
        self.metrics.leader.set(0)
        self.metrics.not_holding()

    def _reconcile(self, t: Target) -> Decision:
        current, _running = self._actuator.replicas(t.key)
        now = self._clock()
        state = self.state.get(t.key)
        if state is None:
            state = self._rebuilt(t, current, now)
        d = t.decide(self._signals.read(t.key), current, state, now)
        if d.target != current:
            log.info("%s: %d -> %d replicas (%s)", t.key, current, d.target, d.reason)
            self._record(t.key, d.state)
            self._actuator.scale(t.key, d.target)  # a failure leaves the state as it was: retried next round
        self.state[t.key] = d.state
        self.metrics.current.labels(t.key).set(current)
        self.metrics.target.labels(t.key).set(d.target)
        self.metrics.decisions.labels(t.key, ":".join(d.reason.split(":")[:2])).inc()  # e.g. hold:up_cooldown
        kind, _, why = d.reason.partition(":")
        self.metrics.held(t.key, why.split(":")[0] if kind == "hold" else None)
        return d

    def _recorded(self) -> dict[str, tuple[float | None, float | None]]:
        return parse_events(self._elector.annotations) if self._elector is not None else {}

    def _rebuilt(self, t: Target, current: int, now: float) -> PolicyState:
        """Windows from the history Prometheus kept (none when it has none: a window then
        starts afresh, which only delays a scale-down); cooldowns from the Lease."""
        last_up, last_down = self._recorded().get(t.key, (None, None))
        history, source = [], "none"
        step = max(self._step, t.history_s / MAX_HISTORY_POINTS)
        read = getattr(self._signals, "history", None)
        if read is not None and t.history_s > 0:
            n = math.ceil(t.history_s / step) + 1  # one step before the window: a full window shows as one
            got = read(t.key, now - n * step, now, step)
            history, source = (got, "prometheus") if got is not None else ([], "unavailable")
        state = t.rebuild(history, current, now, step, last_up, last_down)
        self.metrics.rebuilds.labels(t.key, source).inc()
        log.info("%s: windows rebuilt from %s (low since %s, idle since %s), last up %s, last down %s",
                 t.key, source, state.low_since, state.idle_since, last_up, last_down)
        return state

    def _record(self, key: str, state: PolicyState) -> None:
        """Record the scaling on the Lease before acting; raises LostLease when it is not ours."""
        if self._elector is None:
            return
        events = self._recorded()
        events.update({k: (s.last_up, s.last_down) for k, s in self.state.items()})
        events[key] = (state.last_up, state.last_down)
        payload = json.dumps({k: list(v) for k, v in sorted(events.items())}, separators=(",", ":"))
        if not self._elector.record({EVENTS_ANNOTATION: payload}):
            raise LostLease

    def run(self, interval_s: float, stop: threading.Event) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            self.reconcile_once()
            stop.wait(max(0.0, interval_s - (time.monotonic() - t0)))
