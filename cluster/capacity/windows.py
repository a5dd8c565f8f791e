"""Rebuilding a policy's windows from observed history (pure).

A controller that becomes leader (or starts) never acts on windows it remembered: what it
kept from an earlier lead, or while a follower, may be stale — the load may have broken the
window meanwhile. It rebuilds each window from the history Prometheus kept instead
(``query_range`` at the reconcile interval): the window is the trailing run of points at
which the window's condition held, without a gap.

A point is ``(t, need)``: ``need`` None where the condition did not hold at ``t`` (or there
was no fresh data), else the replicas the load needed at ``t``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    since: float | None  # the condition has held since (None: it does not hold now)
    peak: int = 0  # the most replicas any point of the window needed


def trailing_window(points: Iterable[tuple[float, int | None]], *, now: float, max_gap_s: float) -> Window:
    """The run of points that held up to ``now``: the latest point no more than
    ``max_gap_s`` before ``now``, each one no more than ``max_gap_s`` after the one before
    (a missing point breaks the window, as a round without data does live)."""
    since, peak, after = None, 0, now
    for t, need in sorted((p for p in points if p[0] <= now), key=lambda p: p[0], reverse=True):
        if need is None or after - t > max_gap_s:
            break
        since, peak, after = t, max(peak, need), t
    return Window(since, peak if since is not None else 0)
