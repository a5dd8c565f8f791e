"""Each rolled-out model's candidate weight as the analysis last wrote it, re-read off the
request path; the version of each request picked from it (cluster.routing.versions).

A model with a rollout in its config but no state written yet (the analysis has not
started, or the conformance gate runs) goes to stable: weight 0. After a rollback or an
abort the weight is 0, after a promotion 100.

Mirror mode (`rollout.mirror`): below 100 % every request goes to stable, and the weight is
the share of requests a copy of which the candidate gets (``copies``; the copies are sent by
cluster.gateway.rollout.mirror); at 100 % (promoted) the candidate answers as in a live
rollout, at 0 (rolled back) nothing is copied.

An adapter's rollout (``adapters.<name>.candidate``) is known by the adapter's name: its
weight splits the requests that name the adapter (``adapter_version``); the model's other
requests are version ``other`` (cluster.gateway.rollout.version)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cluster.config.rollout import rollout_targets
from cluster.config.schema import OwcConfig
from cluster.discovery.endpoints import Endpoint
from cluster.discovery.rollouts import RolloutFiles
from cluster.periodic import Periodic
from cluster.routing.versions import CANDIDATE, OTHER, STABLE, pick_version

log = logging.getLogger(__name__)
POLL_S = 0.5
STATES = ("pending", "analysing", "paused", "promoted", "rolled_back", "aborted")


class RolloutView:
    def __init__(self, config: OwcConfig, files: RolloutFiles, *, draw: Callable[[], float] = random.random,
                 period_s: float = POLL_S):
        self.files = files
        self.models = {n: m for n, m in config.models.items() if m.candidate is not None}  # version routing
        self.targets = rollout_targets(config)  # each rollout's key (a model's or an adapter's name) -> (model, adapter)
        self.rolled_out = set(self.targets)  # the admin API's names
        self.adapter_of = {m: a for m, a in self.targets.values() if a is not None}  # model -> its adapter rolled out
        self._sticky = {k: config.models[m].rollout.sticky for k, (m, _) in self.targets.items()}
        self.mirrored = {n for n, m in self.models.items() if m.rollout.mirror}
        self._draw = draw
        self._weights: dict[str, float] = {k: 0.0 for k in self.targets}
        self._states: dict[str, str] = {k: "pending" for k in self.targets}
        self._gates: dict[str, list[dict]] = {k: [] for k in self.targets}  # the last window's gates
        self._mtimes: dict[str, int | None] = {}
        self._fallbacks: dict[tuple[str, str], int] = {}  # (model, version picked but not routable) -> requests
        self._loop = Periodic(self._reload_off_loop, period_s=period_s, what="reading rollout state", log=log,
                              first_after=True)

    def reload(self) -> None:
        for model in self.targets:
            mtime = self.files.mtime(model)
            if mtime == self._mtimes.get(model, -1):
                continue
            doc = self.files.read(model)
            weight = doc.get("weight") if doc else 0
            self._weights[model] = float(weight) if isinstance(weight, (int, float)) else 0.0
            state = doc.get("state") if doc else "pending"
            self._states[model] = state if state in STATES else "pending"
            gates = doc.get("gates") if doc else None
            self._gates[model] = [g for g in gates if isinstance(g, dict)] if isinstance(gates, list) else []
            self._mtimes[model] = mtime

    def weight(self, model: str) -> float | None:
        """The candidate's % of the model's traffic; None: the model has no candidate."""
        return self._weights.get(model) if model in self.models else None

    def adapter_version(self, model: str, adapter: str | None, session: str | None) -> str | None:
        """During an adapter's rollout on ``model``: the version of a request naming ``adapter``
        (by the weight, sticky by session as a model's rollout), ``other`` for the model's
        requests that name no adapter or another one; None: no adapter rollout on ``model``."""
        rolled = self.adapter_of.get(model)
        if rolled is None:
            return None
        if adapter != rolled:
            return OTHER
        return pick_version(self._weights[rolled], session if self._sticky[rolled] else None, self._draw)

    def pick(self, model: str, session: str | None, endpoints: list[Endpoint]) -> str | None:
        """The version that answers (None: the model has no candidate): by weight, sticky by
        session where the rollout says so; the other version when the picked one has no
        replica taking requests (starting, or drained after the rollout ended)."""
        weight = self._weights.get(model) if model in self.models else None
        if weight is None:
            return None
        if model in self.mirrored and weight < 100:  # the client's answer comes from stable alone
            return STABLE
        version = pick_version(weight, session if self._sticky[model] else None, self._draw)
        if not any(e.version == version and not e.draining for e in endpoints):
            other = STABLE if version == CANDIDATE else CANDIDATE
            if any(e.version == other and not e.draining for e in endpoints):
                key = (model, version)
                self._fallbacks[key] = self._fallbacks.get(key, 0) + 1
                return other
        return version

    def copies(self, model: str, session: str | None) -> bool:
        """Mirror mode: the candidate gets a copy of this request (the weight's share of the
        requests, sticky by session as a live rollout picks its version)."""
        weight = self._weights.get(model, 0.0)
        return model in self.mirrored and 0 < weight < 100 and \
            pick_version(weight, session if self._sticky[model] else None, self._draw) == CANDIDATE

    def collect(self):
        """owc_rollout_candidate_weight, owc_rollout_state and the gates' figures, as this process
        last read them, and owc_rollout_version_fallbacks_total (a collector on the process's
        registry: read at scrape time)."""
        w = GaugeMetricFamily("owc_rollout_candidate_weight",
                              "The candidate's % of the model's traffic during a rollout (0 after a rollback).",
                              labels=["model"])
        s = GaugeMetricFamily("owc_rollout_state", "1 for the rollout's state now, 0 for the others.",
                              labels=["model", "state"])
        f = CounterMetricFamily("owc_rollout_version_fallbacks",
                                "Requests whose picked version (label) had no replica taking requests, answered by "
                                "the other version.", labels=["model", "version"])
        for model in self.targets:  # an adapter's rollout under the adapter's name
            w.add_metric([model], self._weights[model])
            for state in STATES:
                s.add_metric([model, state], 1.0 if self._states[model] == state else 0.0)
        for (model, version), n in list(self._fallbacks.items()):
            f.add_metric([model, version], n)
        yield w
        yield s
        yield f
        yield from self._gate_families()

    def _gate_families(self):
        """owc_rollout_gate (each gate's stable, candidate and limit figures in the analysis' last
        window) and owc_rollout_gate_passed (1 within its limit, 0 over; absent while unmeasured)."""
        g = GaugeMetricFamily("owc_rollout_gate", "A rollout gate's figure in the analysis' last window: the stable "
                              "and candidate versions' values and the candidate's limit.", labels=["model", "gate", "of"])
        p = GaugeMetricFamily("owc_rollout_gate_passed", "1: the candidate was within the gate's limit in the "
                              "analysis' last window, 0: over it.", labels=["model", "gate"])
        for model in self.targets:
            for gate in self._gates[model]:
                name = gate.get("name")
                if not isinstance(name, str):
                    continue
                for of in ("stable", "candidate", "limit"):
                    if isinstance(v := gate.get(of), (int, float)):
                        g.add_metric([model, name, of], float(v))
                if isinstance(gate.get("passed"), bool):
                    p.add_metric([model, name], 1.0 if gate["passed"] else 0.0)
        yield g
        yield p

    async def _reload_off_loop(self) -> None:
        """``reload`` on a worker thread: on Kubernetes it is a call to the API server
        (cluster.discovery.rollout_configmap), which must not hold the event loop."""
        await asyncio.to_thread(self.reload)

    async def start(self) -> None:
        """Follow the rollouts' state; nothing to follow (no loop, no thread hop 4 times a second)
        when the config has no candidate."""
        if not self.targets:
            return
        await self._reload_off_loop()
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
