"""The rollout analysis as `owc serve` runs it: a thread of its own process ticking
cluster.rollouts.analysis, and the drain when a rollout ends — promoted: stable's engine
deployment goes to 0 replicas; rolled back or aborted: the candidate's. Scaling down through
Serve drains (cluster.engine.replica: each replica leaves routing, finishes its streams,
then stops), and the gateway processes had already moved the traffic by the weight.
An adapter's rollout has no deployment of its own to drain: both LoRAs stay loaded on the
model's replicas, the weight alone says which one answers (docs/rollouts.md)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cluster.capacity.rollout import RolloutState
from cluster.config.schema import OwcConfig
from cluster.discovery.rollouts import RolloutFiles
from cluster.rollouts.analysis import LocalAnalysis, http_scrape

log = logging.getLogger(__name__)
TICK_S = 1.0


def drained_by(model: str, st: RolloutState) -> str | None:
    """The deployment key (cluster.capacity.actuators.serve_deployment) an ended rollout
    drains: stable's after a promotion, the candidate's after a rollback or an abort."""
    if st.state == "promoted":
        return model
    if st.state in ("rolled_back", "aborted"):
        return f"{model}-candidate"
    return None


class RolloutLoop:
    def __init__(self, config: OwcConfig, files: RolloutFiles, *, scale: Callable[[str, int], None],
                 scrape: Callable[[str], str] = http_scrape, period_s: float = TICK_S,
                 conformance: Callable[[str], list[str]] | None = None):
        """``scale(deployment key, replicas)``: the local Ray Serve actuator's; ``conformance``:
        the gate's failed rows for a model (cluster.rollouts.conformance)."""
        self._scale = scale
        self.analysis = LocalAnalysis(config, files, scrape=scrape, on_change=self._changed, conformance=conformance)
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="owc-rollouts", daemon=True)

    def _changed(self, model: str, st: RolloutState) -> None:
        # An adapter's rollout has no deployment of its own: nothing to drain.
        key = None if model in self.analysis.adapter_rollouts else drained_by(model, st)
        if key is not None:
            log.warning("rollout of %s %s: draining %s", model, st.state, key)
            try:
                self._scale(key, 0)
            except Exception as e:  # Serve busy: the next state change (or a restart) tries again
                log.error("rollout of %s: could not drain %s: %s", model, key, e)

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            try:
                self.analysis.tick()
            except Exception:
                log.exception("rollout analysis tick failed")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def start_local(config: OwcConfig, engine_key: str | None) -> RolloutLoop:
    """`owc serve`'s loop, on the local Ray Serve it started (its state under $OWC_ROLLOUT_DIR)."""
    from cluster.capacity.actuators import RayServeActuator
    from cluster.discovery.rollouts import rollout_dir
    from cluster.rollouts.conformance import serve_conformance

    loop = RolloutLoop(config, RolloutFiles(rollout_dir(config.model_cache_dir)), scale=RayServeActuator().scale,
                       conformance=lambda model: serve_conformance(model, engine_key=engine_key))
    loop.start()
    return loop
