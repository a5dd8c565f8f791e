"""The capacity controller: a thin loop around the pure policy. Each round, per model with
``autoscaling.enabled``: read the replica target in force (actuator), read the signals
(Prometheus), decide, and apply a changed target. With a leader elector, only the Lease
holder acts. Its own metrics go on an injected registry (docs/metrics.md)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from cluster.capacity.actuators import Actuator, Conflict
from cluster.capacity.policy import Decision, PolicyState, Signals
from cluster.capacity.policy import decide as default_decide
from cluster.config.schema import OwcConfig

log = logging.getLogger(__name__)


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


class CapacityController:
    def __init__(
        self, *, config: OwcConfig, signals: Any, actuator: Actuator, registry: CollectorRegistry,
        elector: Any = None, clock: Callable[[], float] = time.time,
        decide: Callable[..., Decision] = default_decide,
    ):
        self._cfg = config
        self._signals = signals
        self._actuator = actuator
        self._elector = elector
        self._clock = clock
        self._decide = decide
        self.metrics = ControllerMetrics(registry)
        self.state: dict[str, PolicyState] = {}
        self.models = [m for m, mc in config.models.items() if mc.autoscaling.enabled]

    def reconcile_once(self) -> dict[str, Decision]:
        if self._elector is not None and not self._elector.is_leader():
            self.metrics.leader.set(0)
            return {}
        self.metrics.leader.set(1)
        out: dict[str, Decision] = {}
        ok = True
        for model in self.models:
            try:
                out[model] = self._reconcile(model)
            except Conflict as e:
                log.info("%s: the object changed underneath (%s); next round", model, e)
            except Exception:
                ok = False
                self.metrics.errors.labels(model).inc()
                log.exception("reconcile of %s failed", model)
        if ok:
            self.metrics.last_reconcile.set(self._clock())
        return out

    def _reconcile(self, model: str) -> Decision:
        mc = self._cfg.models[model]
        current, _running = self._actuator.replicas(model)
        sig: Signals | None = self._signals.read(model)
        d = self._decide(sig, current=current, settings=mc.autoscaling, bounds=mc.replicas,
                         state=self.state.get(model, PolicyState()), now=self._clock())
        if d.target != current:
            log.info("%s: %d -> %d replicas (%s)", model, current, d.target, d.reason)
            self._actuator.scale(model, d.target)  # a failure leaves the state as it was: retried next round
        self.state[model] = d.state
        self.metrics.current.labels(model).set(current)
        self.metrics.target.labels(model).set(d.target)
        self.metrics.decisions.labels(model, ":".join(d.reason.split(":")[:2])).inc()  # e.g. hold:up_cooldown
        return d

    def run(self, interval_s: float, stop: threading.Event) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            self.reconcile_once()
            stop.wait(max(0.0, interval_s - (time.monotonic() - t0)))
