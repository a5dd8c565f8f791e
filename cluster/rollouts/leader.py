"""The rollout analysis as `owc controller` runs it on Kubernetes (docs/rollouts.md): the
same pure policy (cluster.capacity.rollout) through the same analysis as `owc serve`
(cluster.rollouts.analysis), fed from Prometheus (cluster.rollouts.prometheus), its state and
the operators' commands in a ConfigMap (cluster.discovery.rollout_configmap), and only while
this controller holds the Lease.

Leadership: each tick asks the elector whether it holds the Lease now (``holds``: from its
last renewal, no API call; the capacity controller's rounds renew it). A controller that is
not the holder does nothing; on losing the Lease, and on every new Lease term, it forgets
every state it held and reads them again from the ConfigMap when it leads: a new leader
takes the step in progress and its window's start from there, and Prometheus has the
window's counts, so the step goes on where the old leader left it — never skipped, never
restarted. An ended rollout found (or reached) scales the version that lost its traffic
down to one replica through the RayService (the KubernetesActuator; Serve's declarative config
has no 0), again on each new term: a leader killed
between writing ``promoted`` and draining leaves it to the next one.

The conformance gate (``engines`` and ``compare`` given; cluster.rollouts.gate) is started by
the tick while a rollout is ``pending`` and runs on a thread of its own; its verdict is taken
only while this controller leads in the term the run began in, so a leader change mid-gate
makes the leader run it again."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from cluster.capacity.rollout import RolloutState
from cluster.config.rollout import candidate_model
from cluster.config.schema import OwcConfig
from cluster.rollouts.analysis import LocalAnalysis
from cluster.rollouts.gate import LeaderGate
from cluster.rollouts.local import drained_by
from cluster.rollouts.prometheus import PrometheusWindows

log = logging.getLogger(__name__)
TICK_S = 1.0
# Ray Serve's declarative config (serveConfigV2) refuses num_replicas 0 (ServeDeploySchema:
# > 0), and KubeRay applies nothing of an invalid one: the version that lost its traffic keeps
# one idle replica (weight 0 or 100: no request reaches it) until the config drops it.
DRAIN_TO = 1
# The conformance gate waits for a replica of each version up to the candidate's
# startup_timeout_s plus this (its pods are placed, pulled and started first).
GATE_PLACEMENT_S = 600.0


def configmap_name(rayservice: str) -> str:
    return f"{rayservice}-rollouts"


class LeaderRollouts:
    def __init__(self, config: OwcConfig, store: Any, *, prometheus: Any, elector: Any,
                 scale: Callable[[str, int], None], clock: Callable[[], float] | None = None,
                 drain_to: int = DRAIN_TO, engines: Callable[[str], dict[str, str]] | None = None,
                 compare: Callable[[dict[str, str], str], list[str]] | None = None):
        """``store``: cluster.discovery.rollout_configmap.ConfigMapRollouts; ``prometheus``:
        something with PrometheusSignals' ``query``; ``elector``: the controller's
        LeaseElector (``holds``, ``term``); ``scale(deployment key, replicas)``: the
        KubernetesActuator's; ``drain_to``: the replicas the losing version keeps;
        ``engines(model)``: version -> one engine URL (cluster.rollouts.engine_pods) and
        ``compare(urls, model)``: the conformance cases' failed rows — without both, no
        conformance gate (step 1 starts without it, with a warning)."""
        self._drain_to = drain_to
        self._elector = elector
        self._scale = scale
        extra = {"clock": clock} if clock is not None else {}
        gate = None
        if engines is not None and compare is not None:
            startup = {n: candidate_model(m).startup_timeout_s for n, m in config.models.items() if m.candidate}
            gate = LeaderGate(replicas=engines, compare=compare, elector=elector,
                              pending_since=lambda model: self.analysis.state(model).updated or 0.0,
                              wait_s=lambda model: startup.get(model, 600.0) + GATE_PLACEMENT_S, clock=clock or time.time)
        self.analysis = LocalAnalysis(config, store, scrape=_no_scrape, on_change=self._changed,
                                      windows=PrometheusWindows(prometheus), conformance=gate, **extra)
        self._term: Any = None
        self._leading = False
        self._to_drain: set[str] = set()  # deployment keys still to scale to 0 (retried each tick)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def models(self) -> list[str]:
        return self.analysis.models

    def tick(self) -> bool:
        """One tick of the analysis if this controller holds the Lease; False when it does not."""
        if not self._elector.holds():
            if self._leading:
                log.info("rollouts: not the leader any more; states forgotten")
                self.analysis.forget()
                self._to_drain.clear()
            self._leading = False
            return False
        term = self._elector.term
        if not self._leading or term != self._term:
            log.info("rollouts: leading (term %s); states read from the ConfigMap", term)
            self.analysis.forget()
            self._to_drain.clear()  # the states read again name what is still to drain
            self._leading, self._term = True, term
        self.analysis.tick()
        self._drain()
        return True

    def _changed(self, model: str, st: RolloutState) -> None:
        # An adapter's rollout has no deployment of its own: nothing to drain.
        key = None if model in self.analysis.adapter_rollouts else drained_by(model, st)
        if key is None:
            return
        log.warning("rollout of %s %s: draining %s", model, st.state, key)
        self._to_drain.add(key)

    def _drain(self) -> None:
        for key in sorted(self._to_drain):
            try:
                self._scale(key, self._drain_to)
            except Exception as e:  # a conflict (a helm upgrade, the capacity controller) or the API busy
                log.warning("rollouts: could not drain %s yet (retried next tick): %s", key, e)
                continue
            self._to_drain.discard(key)

    def run(self, period_s: float = TICK_S) -> None:
        while not self._stop.wait(period_s):
            try:
                self.tick()
            except Exception:
                log.exception("rollout analysis tick failed")

    def start(self, period_s: float = TICK_S) -> None:
        self._thread = threading.Thread(target=self.run, args=(period_s,), name="owc-rollouts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _no_scrape(url: str) -> str:
    raise ConnectionError("owc controller reads Prometheus, not gateway processes")
