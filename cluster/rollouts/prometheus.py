"""A rollout step's window read from Prometheus (`owc controller`, the chart): what each
version served since the step's window began, from the gateway pods' own `owc_*` series
with their ``version`` label, over ``[now - window_start]``.

The window is in the state (``window_start``), the counts are in Prometheus: a controller
that becomes leader mid-step reads the same window its predecessor was reading, from the
same start, so the step goes on where it was — nothing of it lives in the old leader's
memory. ``increase`` handles a gateway pod restarted mid-window (a counter reset) as the
local analysis's per-source baseline does; p95s are Prometheus's ``histogram_quantile``
over the window's increase of each bucket, the figure the local analysis computes itself.
"""

from __future__ import annotations

import math
from typing import Protocol

from cluster.capacity.rollout import RolloutState, Served, Window

MIN_RANGE_S = 1  # PromQL ranges are whole seconds here


class Querier(Protocol):
    def query(self, promql: str) -> float | None: ...


def window_queries(model: str, version: str, seconds: int) -> dict[str, str]:
    sel, r = f'model="{model}",version="{version}"', f"[{seconds}s]"
    q = {
        "requests": f"sum(increase(owc_requests_total{{{sel}}}{r}))",
        "errors": f'sum(increase(owc_requests_total{{{sel},code=~"5.."}}{r}))',
    }
    for name, metric in (("ttft_p95_s", "owc_time_to_first_token_seconds"), ("itl_p95_s", "owc_inter_token_latency_seconds")):
        q[name] = f"histogram_quantile(0.95, sum by (le) (increase({metric}_bucket{{{sel}}}{r})))"
    return q


class PrometheusWindows:
    def __init__(self, prometheus: Querier):
        """``prometheus``: cluster.capacity.signals.PrometheusSignals (its ``query``);
        a query that fails raises, and the analysis skips that tick (nothing decided)."""
        self._prom = prometheus

    def __call__(self, model: str, state: RolloutState, now: float) -> Window | None:
        """Each version's figures since ``state.window_start``; None when Prometheus has no
        request series of either version in it (no metrics at all)."""
        if state.window_start is None:
            return None
        seconds = max(MIN_RANGE_S, math.ceil(now - state.window_start))
        served, seen = {}, False
        for version in ("stable", "candidate"):
            v = {name: self._prom.query(q) for name, q in window_queries(model, version, seconds).items()}
            seen = seen or v["requests"] is not None
            served[version] = Served(requests=round(v["requests"] or 0), errors=round(v["errors"] or 0),
                                     ttft_p95_s=v["ttft_p95_s"], itl_p95_s=v["itl_p95_s"])
        return Window(**served) if seen else None
