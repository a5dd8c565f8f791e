"""The conformance gate as `owc controller`'s leader runs it on Kubernetes (docs/rollouts.md):
the same cases as `owc serve`'s gate (cluster.rollouts.conformance.compare_versions) against
one stable and one candidate engine replica (cluster.rollouts.engine_pods), bare, with the
engine credential. While it has no verdict the rollout stays ``pending`` (weight 0: no
client request reaches the candidate).

- No replica of each version yet (the candidate's pods are still being placed, pulled,
  loaded): no verdict, asked again next tick, until ``wait_s`` after the rollout began
  (``updated`` of the pending state, kept in the ConfigMap: a new leader waits from the same
  start); then the gate could not run, and the rollout is aborted as in `owc serve`.
- The API server not answering: no verdict, asked again next tick.
- The cases themselves take tens of seconds to minutes on CPU. The Lease is renewed by the
  capacity controller's own rounds meanwhile (another thread). A verdict is kept only if this
  controller still holds the Lease, in the same term, when the cases end: a leader that lost
  it mid-gate writes nothing, and the new leader runs the gate again from the start."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class LeaderGate:
    def __init__(self, *, replicas: Callable[[str], dict[str, str]], compare: Callable[[dict[str, str], str], list[str]],
                 elector: Any, pending_since: Callable[[str], float], wait_s: Callable[[str], float],
                 clock: Callable[[], float]):
        """``replicas(model)``: version -> one engine URL (EnginePods.replica_urls);
        ``compare(urls, model)``: the failed rows (compare_versions with the engine key);
        ``elector``: the LeaseElector (``holds``, ``term``); ``pending_since(model)``: when the
        rollout began (its pending state's ``updated``); ``wait_s(model)``: how long the
        replicas of both versions may take to appear."""
        self._replicas, self._compare = replicas, compare
        self._elector = elector
        self._since, self._wait_s, self._clock = pending_since, wait_s, clock

    def __call__(self, model: str) -> list[str] | None:
        """The failed rows (the verdict), or None: no verdict this tick."""
        try:
            urls = self._replicas(model)
        except Exception as e:  # the API server away or refusing: not the candidate's fault
            log.warning("rollout of %s: conformance gate: engine pods not listed (again next tick): %s", model, e)
            urls = {}
        if len(urls) < 2:
            waited = self._clock() - self._since(model)
            if waited > self._wait_s(model):
                raise TimeoutError(f"no replica of each version after {waited:.0f}s: {sorted(urls)}")
            return None
        term = self._elector.term
        log.warning("rollout of %s: conformance gate: stable %s against candidate %s", model, urls["stable"],
                    urls["candidate"])
        try:
            failed = self._compare(urls, model)
        except Exception:  # could not run: the candidate is not trusted (aborted), unless the Lease went meanwhile
            if self._leading(term, model):
                raise
            return None
        return failed if self._leading(term, model) else None

    def _leading(self, term: Any, model: str) -> bool:
        if self._elector.holds() and self._elector.term == term:
            return True
        log.warning("rollout of %s: the Lease was lost while the conformance gate ran: its verdict is not written "
                    "(the leader runs the gate again)", model)
        return False
