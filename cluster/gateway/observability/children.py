"""Cheaper metric updates on the request path (issue 34's profile): prometheus_client's
``labels()`` validates and locks on every call, and a histogram's ``observe`` walks its
buckets once per value. A request's inter-token gaps (one per token) are observed at its
end in one pass here, the children of a label set are looked up once, and a request's dozen
updates skip the checks prometheus_client repeats on each (``add``, ``observe``).

The gateway never removes a label set, so a memoised child is always the live one.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any


class Children:
    """``metric.labels(*values)``, memoised per metric and label values."""

    __slots__ = ("_children",)

    def __init__(self) -> None:
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def __call__(self, metric: Any, *values: str) -> Any:
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child


def add(child: Any, amount: float = 1) -> None:
    """``child.inc(amount)`` of a counter's or gauge's child (a gauge's ``dec(n)`` is ``add(child,
    -n)``) without the checks ``inc`` repeats on every call (that the metric has no unlabelled
    parent, that a counter's amount is not negative: the request path's amounts are counts)."""
    child._value.inc(amount)  # noqa: SLF001 - prometheus_client's child layout, tested


def observe(histogram: Any, value: float) -> None:
    """``histogram.observe(value)``: its bucket found by bisection, not a walk of the bounds."""
    histogram._buckets[bisect_left(histogram._upper_bounds, value)].inc(1)  # noqa: SLF001
    histogram._sum.inc(value)  # noqa: SLF001


def observe_all(histogram: Any, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for every value, in one pass: each bucket's count (buckets
    are stored uncumulated; cumulated when collected) and the sum are added to once."""
    if not values:
        return
    bounds = histogram._upper_bounds  # noqa: SLF001 - prometheus_client's child layout, tested
    counts: dict[int, int] = {}
    for v in values:
        i = bisect_left(bounds, v)  # the first bound >= v, as observe's `amount <= bound`
        counts[i] = counts.get(i, 0) + 1
    buckets = histogram._buckets  # noqa: SLF001
    for i, n in counts.items():
        buckets[i].inc(n)
    histogram._sum.inc(sum(values))  # noqa: SLF001
