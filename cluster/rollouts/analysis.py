"""`owc serve`'s rollout analysis, in its own process: no Prometheus, no controller to start.

Each tick (``tick``): the operators' commands first (cluster.discovery.rollouts), then, per
model with a candidate, what each version served since the step's window began — read from
every gateway process's own /metrics (the processes announce their metrics URL) — through
the pure policy (cluster.capacity.rollout.advance). The state document is rewritten when
it changed; the gateway processes route by its weight within half a second.

A window's baseline is the counters read when the window began (this process's memory). An
analysis that starts on a state it did not write (a restart) begins the current step's
window again from now: the step is analysed in full, never skipped.

A rollout is known by its key (cluster.config.rollout.rollout_targets): a model's name, or
an adapter's for an adapter's candidate; the metrics are read under the model's name (its
requests that name no rolled-out adapter are version ``other`` then, outside the window)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from cluster.capacity import rollout as policy
from cluster.capacity.rollout import Counters, RolloutState, Window, served_between
from cluster.config.rollout import rollout_fingerprint, rollout_targets
from cluster.config.schema import OwcConfig
from cluster.discovery.rollouts import RolloutFiles

log = logging.getLogger(__name__)
VERSIONS = ("stable", "candidate")
Readings = dict[str, dict[str, Counters]]  # version -> source -> counters


def parse_counters(text: str, model: str) -> dict[str, Counters]:
    """One gateway process's /metrics text: each version's counters of ``model``."""
    raw: dict[str, dict] = {v: {"requests": 0.0, "errors": 0.0, "ttft": {}, "itl": {}} for v in VERSIONS}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            lab = s.labels
            if lab.get("model") != model or lab.get("version") not in raw:
                continue
            r = raw[lab["version"]]
            if s.name == "owc_requests_total":
                r["requests"] += s.value
                if lab.get("code", "").startswith("5"):
                    r["errors"] += s.value
            elif s.name in ("owc_time_to_first_token_seconds_bucket", "owc_inter_token_latency_seconds_bucket"):
                h = r["ttft" if s.name.startswith("owc_time") else "itl"]
                le = float(lab["le"])
                h[le] = h.get(le, 0.0) + s.value
    return {v: Counters(**r) for v, r in raw.items()}


def http_scrape(url: str) -> str:
    """A gateway process's /metrics text; ConnectionError when nothing listens there."""
    import httpx

    try:
        return httpx.get(url + "/metrics", timeout=2).text
    except httpx.ConnectError as e:
        raise ConnectionError(str(e)) from e


class LocalAnalysis:
    def __init__(self, config: OwcConfig, files: RolloutFiles | Any, *, scrape: Callable[[str], str],
                 clock: Callable[[], float] = time.time, on_change: Callable[[str, RolloutState], None] | None = None,
                 conformance: Callable[[str], list[str] | None] | None = None,
                 windows: Callable[[str, RolloutState, float], Window | None] | None = None):
        """``scrape``: a gateway process's /metrics text by its metrics URL (raises when it
        cannot be read); ``on_change``: told each state change (owc serve drains the version
        that lost its traffic); ``conformance``: the conformance gate's failed rows for a
        model, candidate vs stable, or None when it has no verdict yet (the rollout stays pending;
        asked again next tick); no ``conformance``: not available here, the gate is skipped
        with a warning.
        ``windows(model, state, now)``: a source that reads the window since
        ``state.window_start`` by itself (cluster.rollouts.prometheus, `owc controller`)
        instead of the gateway processes' /metrics; a state found written keeps its window
        then (the counts are the source's, not this process's)."""
        self._windows = windows
        self._conformance = conformance
        self._files = files
        targets = rollout_targets(config)
        self._settings = {k: config.models[m].rollout for k, (m, _) in targets.items()}
        self._served = {k: m for k, (m, _) in targets.items()}  # the `model` label of its metrics
        self.adapter_rollouts = {k for k, (_, a) in targets.items() if a is not None}
        self._fingerprints = {k: rollout_fingerprint(config, k) for k in targets}
        self._scrape = scrape
        self._clock = clock
        self._on_change = on_change
        self._states: dict[str, RolloutState] = {}
        self._base: dict[str, tuple[float | None, Readings]] = {}  # model -> (window start, readings then)

    @property
    def models(self) -> list[str]:
        return list(self._settings)

    def state(self, model: str) -> RolloutState:
        if model not in self._states:
            doc = self._files.read(model)
            now = self._clock()
            if doc is not None and doc.get("fingerprint", self._fingerprints[model]) != self._fingerprints[model]:
                log.warning("rollout of %s: the state found (%s) is another candidate's or rollout's; a new "
                            "rollout begins", model, doc.get("state"))
                doc = None
            if doc is None:
                st = policy.start(self._settings[model], now)
            else:  # written by an earlier analysis: its step's window starts again, in full
                st = RolloutState.from_dict(doc)
                if st.state == "analysing" and self._windows is None:
                    st = RolloutState.from_dict({**st.to_dict(), "window_start": now})
            self._set(model, st, force=True)
        return self._states[model]

    def forget(self) -> None:
        """Drop every state and baseline held here: the next tick reads the states again
        (`owc controller` on losing the Lease or in a new term: another leader may have moved them)."""
        self._states.clear()
        self._base.clear()

    def tick(self) -> None:
        for cmd in self._files.pending():
            self._command(cmd)
        readings = self._read_all() if self._settings and self._windows is None else {}
        now = self._clock()
        for model, settings in self._settings.items():
            st = self.state(model)
            if st.state == "pending":  # the conformance gate comes first, before any request
                rows = self._conformance_rows(model)
                if rows is not None:
                    self.conformance(model, rows)
                continue
            window = self._windows(self._served[model], st, now) if self._windows else \
                self._window(model, st, readings.get(model))
            self._set(model, policy.advance(st, settings, window, now))

    def _conformance_rows(self, model: str) -> list[str] | None:
        if not self._settings[model].conformance:
            return []
        if model in self.adapter_rollouts:  # both LoRAs on the same engine: one API surface
            log.info("rollout of adapter %s: no conformance gate (the engine is stable's own)", model)
            return []
        if self._conformance is None:
            log.warning("rollout of %s: no conformance gate here; step 1 starts without it", model)
            return []
        try:
            return self._conformance(model)
        except Exception as e:  # it could not run: the candidate is not trusted either
            log.warning("rollout of %s: the conformance gate could not run: %s", model, e)
            return [f"(not run: {type(e).__name__}: {e})"]

    def conformance(self, model: str, failed_rows: list[str]) -> None:
        st = self.state(model)
        self._set(model, policy.conformance_done(st, self._settings[model], failed_rows, self._clock()))

    def _command(self, cmd: Mapping) -> None:
        model, action = cmd.get("model"), cmd.get("action")
        if model not in self._settings:
            self._files.answer(cmd["id"], {"error": f"model {model!r} has no rollout here"})
            return
        try:
            st = policy.command(self.state(model), self._settings[model], str(action), self._clock())
        except policy.CommandRefused as e:
            self._files.answer(cmd["id"], {"error": str(e)})
            return
        log.warning("rollout of %s: %s by %s", model, action, cmd.get("who") or "an operator")
        self._set(model, st)
        self._files.answer(cmd["id"], {"state": self._doc(model, st)})

    def _read_all(self) -> dict[str, Readings]:
        out: dict[str, Readings] = {m: {v: {} for v in VERSIONS} for m in self._settings}
        for url, announced in self._files.gateways().items():
            try:
                text = self._scrape(url)
            except ConnectionError:  # the process is gone (killed): its announcement too
                announced.unlink(missing_ok=True)
                continue
            except Exception as e:  # busy or restarting: this tick goes without it
                log.debug("rollout analysis: %s not read: %s", url, e)
                continue
            for model in self._settings:
                for version, counters in parse_counters(text, self._served[model]).items():
                    out[model][version][url] = counters
        return out

    def _window(self, model: str, st: RolloutState, now: Readings | None) -> Window | None:
        """What each version served since the window began; None without any reading."""
        if now is None or not any(now[v] for v in VERSIONS):
            return None
        since, base = self._base.get(model, (None, None))
        if base is None or since != st.window_start:  # a new window: its baseline is now
            self._base[model] = (st.window_start, now)
            base = now
        return Window(stable=served_between(base["stable"], now["stable"]),
                      candidate=served_between(base["candidate"], now["candidate"]))

    def _set(self, model: str, st: RolloutState, *, force: bool = False) -> None:
        before = self._states.get(model)
        if st == before and not force:
            return
        self._states[model] = st
        self._files.write(model, self._doc(model, st))
        if before is not None and (before.state, before.weight) != (st.state, st.weight):
            log.warning("rollout of %s: %s, candidate weight %d%% (%s)", model, st.state, st.weight,
                        st.reason or gates_text(st.gates))
        if self._on_change is not None and (before is None or before.state != st.state or before.weight != st.weight):
            self._on_change(model, st)

    def _doc(self, model: str, st: RolloutState) -> dict:
        return {"model": model, "steps": self._settings[model].steps, "step_s": self._settings[model].step_s,
                "fingerprint": self._fingerprints[model], **st.to_dict()}


def gates_text(gates) -> str:
    """The last window's gates for the log of a step that passed (a rollback's reason names its own)."""
    def n(x: float | None) -> str:
        return "-" if x is None else f"{x:.3g}"

    measured = [g for g in gates if g.passed is not None]
    if not measured:
        return ""
    return "the last window: " + ", ".join(
        f"{g.name} {n(g.candidate)} {'within' if g.passed else 'over'} {n(g.limit)} (stable {n(g.stable)})"
        for g in measured)
