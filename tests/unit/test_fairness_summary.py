"""loadtests.fairness's summary: each variant phase (no credit, no release notices, no burst) paired per
run with the same front that has it."""

from __future__ import annotations

import pytest

from loadtests.fairness import summarise


def phase(p95: float, b: float) -> dict:
    return {"a": {"ttft_p95_s": p95}, "b": {"completed_per_s": b}}


@pytest.mark.parametrize(("variant", "front", "key"), [
    ("fair-3gw-nonotify", "fair-3gw", "notify_vs_none"),
    ("fair-2gw-nonotify", "fair-2gw", "notify_vs_none"),
    ("fair-nocredit", "fair", "credit_vs_none"),
    ("fair-3gw-nocredit", "fair-3gw", "credit_vs_none"),
    ("fair-noburst", "fair", "burst_vs_none"),
    ("fair-2gw-noburst", "fair-2gw", "burst_vs_none"),
])
def test_a_variant_is_paired_per_run_with_its_front(variant, front, key):
    runs = [{"alone": phase(0.1, 0), "alone-2gw": phase(0.1, 0), "alone-3gw": phase(0.1, 0), "fifo": phase(1.0, 20),
             "fair": phase(0.15, 17), front: phase(0.2 * (i + 1), 16), variant: phase(0.4, 8 * (i + 1))}
            for i in range(3)]
    got = summarise(runs, rate_a=2.0, cap=22.0)[variant]
    assert got[f"{key}_a_ttft_p95"] == pytest.approx({"median": 1.0, "min": 0.5, "max": 1.5, "n": 3})
    assert got[f"{key}_b"] == pytest.approx({"median": 1.0, "min": 16 / 24, "max": 2.0, "n": 3})
    assert got["a_ttft_p95_ratio"]["median"] == pytest.approx(4.0)
