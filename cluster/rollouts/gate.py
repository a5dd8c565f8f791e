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
- The cases take tens of seconds to minutes on CPU: they run on a thread of their own, and
  each tick until they end answers "no verdict yet", so the analysis goes on meanwhile
  (other models' steps, operator commands: an abort during the gate applies at once). The
  Lease is renewed by the capacity controller's rounds as always. A verdict is kept only if
  this controller still holds the Lease, in the term the run began in, when it is taken: a
  leader that lost the Lease mid-gate writes nothing, and the leader runs the gate again."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class _Run:
    term: Any
    done: threading.Event = field(default_factory=threading.Event)
    failed: list[str] | None = None
    error: Exception | None = None


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
        self._runs: dict[str, _Run] = {}

    def __call__(self, model: str) -> list[str] | None:
        """The failed rows (the verdict), or None: no verdict this tick. Raises when the gate
        could not run (the rollout is then aborted)."""
        run = self._runs.get(model)
        if run is not None:
            if not run.done.is_set():
                return None
            del self._runs[model]
            if not self._leading(run.term, model):
                return None  # a run of an earlier term: this tick's leader starts its own
            if run.error is not None:
                raise run.error
            return run.failed
        urls = self._find(model)
        if urls is not None:
            self._start(model, urls)
        return None

    def _find(self, model: str) -> dict[str, str] | None:
        try:
            urls = self._replicas(model)
        except Exception as e:  # the API server away or refusing: not the candidate's fault
            log.warning("rollout of %s: conformance gate: engine pods not listed (again next tick): %s", model, e)
            urls = {}
        if len(urls) == 2:
            return urls
        waited = self._clock() - self._since(model)
        if waited > self._wait_s(model):
            raise TimeoutError(f"no replica of each version after {waited:.0f}s: {sorted(urls)}")
        return None

    def _start(self, model: str, urls: dict[str, str]) -> None:
        run = self._runs[model] = _Run(term=self._elector.term)
        log.warning("rollout of %s: conformance gate: stable %s against candidate %s", model, urls["stable"],
                    urls["candidate"])

        def cases() -> None:
            try:
                run.failed = self._compare(urls, model)
            except Exception as e:  # could not run: the candidate is not trusted (aborted, if still leading)
                run.error = e
            finally:
                run.done.set()

        threading.Thread(target=cases, name=f"owc-conformance-{model}", daemon=True).start()

    def _leading(self, term: Any, model: str) -> bool:
        if self._elector.holds() and self._elector.term == term:
            return True
        log.warning("rollout of %s: the conformance gate ended after the Lease was lost or renewed in a new term: "
                    "its verdict is not written (the gate runs again)", model)
        return False
