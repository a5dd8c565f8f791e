"""Rollout analysis: a candidate version against stable, step by step (pure; docs/rollouts.md).

``advance(state, settings, window, now)`` is the whole policy: no I/O, no clock of its own.
Its input is what each version served over the current step's window (requests, 5xx,
TTFT and ITL p95), measured by whoever runs it — `owc serve` from the gateway processes'
own metrics, `owc controller` from Prometheus. Its state is a small JSON-able record, kept
where a restart or a new leader finds it, and resumed from there: the step in progress and
when its window began, never a counter of this process.

- A step is analysed for ``step_s``, and longer until each version served
  ``gates.min_requests`` in its window; then its gates decide. All pass: the next step, or,
  after the last analysed one, **promoted** (the candidate serves 100 %). One fails:
  **rolled_back** at once (weight 0), the reason naming the gate and its figures.
- No data in a window (either version served nothing, or one has latency samples and the
  other none) **pauses** the step; it resumes with a fresh window when data comes back.
  It never promotes on no data.
- An operator may promote, abort, pause or resume (``command``); a paused-by-operator
  rollout waits for resume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal

from cluster.config.rollout import Gates, Rollout

State = Literal["pending", "analysing", "paused", "promoted", "rolled_back", "aborted"]
Command = Literal["promote", "abort", "pause", "resume"]
FINAL: frozenset[str] = frozenset({"promoted", "rolled_back", "aborted"})
COMMANDS: tuple[str, ...] = ("promote", "abort", "pause", "resume")
ERROR_SLACK = 0.005  # the error-rate gate's absolute slack: 0.5 percentage points


class CommandRefused(ValueError):
    """A command that does not apply to the rollout's state (the API answers 409)."""


@dataclass(frozen=True)
class Served:
    """What one version served in one window."""

    requests: int
    errors: int  # answers with a 5xx status
    ttft_p95_s: float | None = None  # None: no sample (no streamed request)
    itl_p95_s: float | None = None


@dataclass(frozen=True)
class Window:
    stable: Served
    candidate: Served


@dataclass(frozen=True)
class Gate:
    """One gate's figures in the last window; ``passed`` None: not measured."""

    name: str
    stable: float | None
    candidate: float | None
    limit: float | None
    passed: bool | None


@dataclass(frozen=True)
class RolloutState:
    state: State = "pending"
    step: int = 0  # index into the analysed steps
    weight: int = 0  # the candidate's % of the model's traffic now
    reason: str | None = None  # why it ended or is paused
    window_start: float | None = None  # when the current step's window began
    paused_by: Literal["no_data", "operator"] | None = None
    gates: tuple[Gate, ...] = field(default_factory=tuple)  # each gate's figures in the last window
    updated: float = 0.0

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gates"] = [asdict(g) for g in self.gates]
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> RolloutState:
        """From ``to_dict``'s form; other keys of a larger document are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in d.items() if k in known},
                      "gates": tuple(Gate(**g) for g in d.get("gates", ()))})


def start(settings: Rollout, now: float) -> RolloutState:
    """A rollout begins pending (the conformance gate, when on, runs first); else step 1 at once."""
    if settings.conformance:
        return RolloutState(updated=now)
    return _step(RolloutState(), settings, 0, now)


def conformance_done(state: RolloutState, settings: Rollout, failed_rows: Sequence[str], now: float) -> RolloutState:
    """The conformance gate's verdict: no failed row starts step 1; any aborts before a request."""
    if state.state != "pending":
        return state
    if failed_rows:
        return replace(state, state="aborted", weight=0, updated=now,
                       reason=f"conformance failed: {', '.join(failed_rows)}")
    return _step(state, settings, 0, now)


def advance(state: RolloutState, settings: Rollout, window: Window | None, now: float) -> RolloutState:
    """One tick of the analysis. ``window``: what each version served since
    ``state.window_start`` (None: no metrics at all)."""
    if state.state == "paused" and state.paused_by == "no_data" and (has_data(window) or _errors_decide(window)):
        return replace(state, state="analysing", paused_by=None, reason=None, window_start=now, updated=now)
    if state.state != "analysing" or state.window_start is None or now - state.window_start < settings.step_s:
        return state
    no_data = replace(state, state="paused", paused_by="no_data", updated=now, gates=(),
                      reason=f"no data in step {state.step + 1}'s window: {_missing(window)}")
    if not has_data(window) and not _errors_decide(window):
        return no_data
    assert window is not None
    if min(window.stable.requests, window.candidate.requests) < settings.gates.min_requests:
        return state  # too few to decide: the window runs on
    gates = evaluate(window, settings.gates)
    failed = [g for g in gates if g.passed is False]
    if not has_data(window):  # latency for one version only: a failed error gate alone decides
        failed = [g for g in failed if g.name == "max_error_rate_ratio"]
        if not failed:
            return no_data
    if failed:
        return replace(state, state="rolled_back", weight=0, gates=gates, updated=now,
                       reason=f"step {state.step + 1} ({state.weight}%): " + "; ".join(map(_why, failed)))
    analysed = settings.analysed_steps
    if state.step + 1 >= len(analysed):
        return replace(state, state="promoted", weight=100, gates=gates, updated=now,
                       reason=f"every step passed ({', '.join(f'{s}%' for s in analysed)})")
    return replace(_step(state, settings, state.step + 1, now), gates=gates)


def command(state: RolloutState, settings: Rollout, what: str, now: float) -> RolloutState:
    """An operator's promote, abort, pause or resume; CommandRefused where it does not apply."""
    if what not in COMMANDS:
        raise CommandRefused(f"unknown rollout command {what!r}; one of {', '.join(COMMANDS)}")
    if state.final:
        raise CommandRefused(f"the rollout has ended ({state.state}); nothing to {what}")
    if what == "promote":
        return replace(state, state="promoted", weight=100, paused_by=None, reason="promoted by an operator",
                       updated=now)
    if what == "abort":
        return replace(state, state="aborted", weight=0, paused_by=None, reason="aborted by an operator", updated=now)
    if what == "pause":
        # Paused for no data, it would resume by itself when data comes back: an operator's
        # pause holds it until resume, as it holds an analysing step.
        if state.state == "paused" and state.paused_by == "operator":
            raise CommandRefused("the rollout is already paused by an operator")
        if state.state not in ("analysing", "paused"):
            raise CommandRefused(f"only an analysing rollout (or one paused for no data) can be paused "
                                 f"(it is {state.state})")
        return replace(state, state="paused", paused_by="operator", reason="paused by an operator", updated=now)
    if state.state != "paused":
        raise CommandRefused(f"only a paused rollout can be resumed (it is {state.state})")
    return replace(state, state="analysing", paused_by=None, reason=None, window_start=now, updated=now)


def _errors_decide(window: Window | None) -> bool:
    """Both versions served, latency measured for one only, and the other answered errors (a
    candidate failing every request streams no token): the window runs on to ``min_requests``
    and the error gate judges it instead of pausing on no data."""
    if window is None or min(window.stable.requests, window.candidate.requests) <= 0:
        return False
    s, c = window.stable, window.candidate
    unmeasured = [v for v in (s, c) if v.ttft_p95_s is None or v.itl_p95_s is None]
    return len(unmeasured) == 1 and unmeasured[0].errors > 0


def has_data(window: Window | None) -> bool:
    return window is not None and not _missing(window)


def evaluate(window: Window, gates: Gates) -> tuple[Gate, ...]:
    """Each gate's figures and verdict (candidate vs stable over the window)."""
    s, c = window.stable, window.candidate
    s_rate, c_rate = s.errors / s.requests, c.errors / c.requests
    err_limit = gates.max_error_rate_ratio * s_rate + ERROR_SLACK
    out = [Gate("max_error_rate_ratio", s_rate, c_rate, err_limit, c_rate <= err_limit)]
    for name, ratio, sv, cv in (("max_ttft_p95_ratio", gates.max_ttft_p95_ratio, s.ttft_p95_s, c.ttft_p95_s),
                                ("max_itl_p95_ratio", gates.max_itl_p95_ratio, s.itl_p95_s, c.itl_p95_s)):
        if sv is None or cv is None:  # neither has a sample (else the window has no data)
            out.append(Gate(name, sv, cv, None, None))
            continue
        limit = max(ratio * sv, sv + gates.min_delta_s)  # fails only above both
        out.append(Gate(name, sv, cv, limit, cv <= limit))
    return tuple(out)


@dataclass(frozen=True)
class Counters:
    """One version's cumulative counters as one source (a gateway process) exports them."""

    requests: float = 0.0
    errors: float = 0.0
    ttft: Mapping[float, float] = field(default_factory=dict)  # cumulative {le: count}
    itl: Mapping[float, float] = field(default_factory=dict)


def served_between(before: Mapping[str, Counters], after: Mapping[str, Counters]) -> Served:
    """What one version served between two readings of its sources (by source, e.g. each
    gateway process's metrics URL). A source whose counters went down restarted: all it
    counted since is new; a source that appeared counts from zero; one that went away is
    not counted (its window is lost, the others' stands)."""
    requests = errors = 0.0
    ttft: dict[float, float] = {}
    itl: dict[float, float] = {}
    for src, now in after.items():
        then = before.get(src, Counters())
        if now.requests < then.requests or now.errors < then.errors:
            then = Counters()  # restarted
        requests += now.requests - then.requests
        errors += now.errors - then.errors
        for into, a, b in ((ttft, now.ttft, then.ttft), (itl, now.itl, then.itl)):
            for le, n in a.items():
                into[le] = into.get(le, 0.0) + max(n - b.get(le, 0.0), 0.0)
    return Served(requests=int(requests), errors=int(errors),
                  ttft_p95_s=histogram_quantile(0.95, ttft), itl_p95_s=histogram_quantile(0.95, itl))


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's histogram_quantile over cumulative ``{le: count}`` buckets (+Inf included):
    linear within the bucket; None without observations."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank, prev_le, prev_n = q * ordered[-1][1], 0.0, 0.0
    for le, n in ordered:
        if n >= rank:
            if math.isinf(le):
                return prev_le  # as Prometheus: the highest finite bound
            return prev_le + (le - prev_le) * ((rank - prev_n) / (n - prev_n) if n > prev_n else 1.0)
        prev_le, prev_n = le, n
    return prev_le


def _step(state: RolloutState, settings: Rollout, index: int, now: float) -> RolloutState:
    return replace(state, state="analysing", step=index, weight=settings.analysed_steps[index], paused_by=None,
                   reason=None, window_start=now, updated=now)


def _missing(window: Window | None) -> str:
    if window is None:
        return "no metrics"
    problems = [f"{v} served no request" for v in ("stable", "candidate") if getattr(window, v).requests <= 0]
    for what in ("ttft_p95_s", "itl_p95_s"):
        s, c = getattr(window.stable, what), getattr(window.candidate, what)
        if (s is None) != (c is None):
            problems.append(f"{what.split('_')[0].upper()} measured for {'stable' if s is not None else 'candidate'} "
                            "only")
    return "; ".join(problems)


def _why(g: Gate) -> str:
    if g.name == "max_error_rate_ratio":
        return f"5xx share {g.candidate:.1%} > limit {g.limit:.1%} (stable {g.stable:.1%})"
    what = "TTFT" if g.name == "max_ttft_p95_ratio" else "ITL"
    return f"{what} p95 {g.candidate:.3f}s > limit {g.limit:.3f}s (stable {g.stable:.3f}s)"
