"""The request path's cheaper metric updates (cluster.gateway.observability.children): a
histogram observed all at once exposes exactly what one observe per value does, and a
memoised child is the one ``labels()`` gives."""

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cluster.gateway.observability.children import Children, add, observe, observe_all
from cluster.metrics.buckets import ITL_BUCKETS


def _samples(registry: CollectorRegistry) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in registry.collect() for s in fam.samples if not s.name.endswith("_created")}


@pytest.mark.parametrize("values", [
    [],
    [0.0],
    [0.004, 0.004, 0.2, 7.5],
    [b for b in ITL_BUCKETS],  # exactly on each bound: that bucket, as observe's `<=`
    [ITL_BUCKETS[-1] * 10, math.inf],  # beyond the last bound: +Inf
    [0.0005 * i for i in range(300)],
])
def test_observe_all_equals_one_observe_per_value(values):
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("x", "x", ["m"], buckets=ITL_BUCKETS, registry=one).labels("a")
    h2 = Histogram("x", "x", ["m"], buckets=ITL_BUCKETS, registry=many).labels("a")
    for v in values:
        h1.observe(v)
    observe_all(h2, values)
    assert _samples(one) == _samples(many)


def test_children_are_labels_children_memoised():
    reg = CollectorRegistry()
    c = Counter("y", "y", ["a", "b"], registry=reg)
    child = Children()
    assert child(c, "1", "2") is c.labels("1", "2")
    assert child(c, "1", "2") is child(c, "1", "2")
    assert child(c, "1", "3") is not child(c, "1", "2")
    child(c, "1", "2").inc(3)
    assert reg.get_sample_value("y_total", {"a": "1", "b": "2"}) == 3


@pytest.mark.parametrize("value", [0.0, 0.004, *ITL_BUCKETS, ITL_BUCKETS[-1] * 10, math.inf])
def test_observe_equals_prometheus_observe(value):
    one, fast = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("x", "x", ["m"], buckets=ITL_BUCKETS, registry=one).labels("a")
    h2 = Histogram("x", "x", ["m"], buckets=ITL_BUCKETS, registry=fast).labels("a")
    for _ in range(3):
        h1.observe(value)
        observe(h2, value)
    assert _samples(one) == _samples(fast)


@pytest.mark.parametrize("amounts", [[1], [1, 1, 5], [2, -1, -1, 3]])
def test_add_equals_inc_and_dec(amounts):
    one, fast = CollectorRegistry(), CollectorRegistry()
    c1, c2 = (Counter("c", "c", ["m"], registry=r).labels("a") for r in (one, fast))
    g1, g2 = (Gauge("g", "g", ["m"], registry=r).labels("a") for r in (one, fast))
    for n in amounts:
        if n > 0:
            c1.inc(n)
            add(c2, n)
        g1.inc(n) if n > 0 else g1.dec(-n)
        add(g2, n)
    assert _samples(one) == _samples(fast)
