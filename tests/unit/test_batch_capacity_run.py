"""The batch capacity run's report (loadtests/batch_capacity.py, issue 29 must-show 5): what its
verdict calls a held minimum, a lost or twice-written line and a double charge, from a run's
summary; and the docs block rendered from the committed result."""

from __future__ import annotations

import json

import pytest

from loadtests import batch_capacity, readme_figures


def summary(**kw) -> dict:
    alone = {"replicas_max": 1, "decided_max": 1, "scaled_up": False, "lines_done_at_end": 40,
             "batch_queue_read_max": 12.0}
    batch = {"status": "completed", "lines": 3, "output_lines": 3, "distinct_custom_ids": 3, "custom_ids_missing": [],
             "error_lines": 0, "output_not_200": 0, "usage_requests": 3}
    real = {"batch_alone": alone, "batch": batch, "peak_replicas": 3, "drains_with_batch_lines_running": 1}
    for key, value in kw.items():
        part, _, field = key.partition("__")
        (real[part] if field else real).update({field: value} if field else {part: value})
    return real


@pytest.mark.parametrize("case, changes, budget, failed", [
    ("all held", {}, 0, set()),
    ("scaled up alone", {"batch_alone__replicas_max": 2, "batch_alone__decided_max": 2}, 0,
     {"batch_alone_held_the_minimum_or_its_budget"}),
    ("budget kept", {"batch_alone__replicas_max": 2, "batch_alone__decided_max": 2}, 2, set()),
    ("budget not taken", {}, 2, {"batch_alone_held_the_minimum_or_its_budget"}),
    ("batch stalled alone", {"batch_alone__lines_done_at_end": 0}, 0, {"batch_progressed_alone"}),
    ("a line twice", {"batch__output_lines": 4}, 0, {"one_output_line_per_custom_id"}),
    ("a line lost", {"batch__output_lines": 2, "batch__distinct_custom_ids": 2,
                     "batch__custom_ids_missing": ["line-2"]}, 0, {"one_output_line_per_custom_id"}),
    ("a line in the error file", {"batch__error_lines": 1}, 0, {"no_error_lines"}),
    ("a line charged twice", {"batch__usage_requests": 4}, 0, {"charged_once"}),
    ("no drain ran a line", {"drains_with_batch_lines_running": 0}, 0, {"a_drain_ran_batch_lines"}),
    ("never scaled up", {"peak_replicas": 1}, 0, {"interactive_scaled_up_to_2_plus"}),
])
def test_verdict(case, changes, budget, failed):
    v = batch_capacity.verdict(summary(**changes), budget)
    assert {k for k, ok in v.items() if not ok} == failed, case


def test_batch_input_has_one_line_per_custom_id():
    rows = [json.loads(x) for x in batch_capacity.batch_input(5, 7).splitlines()]
    assert [r["custom_id"] for r in rows] == [f"line-{i}" for i in range(5)]
    assert {(r["url"], r["body"]["max_tokens"], r["body"].get("stream")) for r in rows} == {("/v1/completions", 7, None)}


def test_block_reflects_the_committed_result():
    doc = json.loads((readme_figures.RESULTS / readme_figures.BATCH_CAPACITY).read_text())
    block = readme_figures.batch_capacity_block(doc)
    b, a = doc["real"]["batch"], doc["real"]["batch_alone"]
    assert f"{b['output_lines']} output lines for {b['distinct_custom_ids']} custom_ids of {b['lines']}" in block
    assert f"replicas {a['replicas_min']}–{a['replicas_max']}" in block and "not vLLM" in block
    assert f"usage records: {b['usage_requests']} requests" in block
