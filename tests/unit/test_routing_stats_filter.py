"""The scrape parser reads only the families it needs (cluster.routing.stats.wanted_lines):
on vLLM's own /metrics texts (recorded, tests/unit/data/*.prom) the stats are those of a
parse of the whole text, and the filtered text is a small part of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.routing import stats

TEXTS = sorted((Path(__file__).parent / "data").glob("vllm_lora_metrics_*.prom"))


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: p.stem)
def test_filtered_parse_equals_the_whole_parse(path, monkeypatch):
    text = path.read_text()
    filtered = stats.parse_vllm_metrics(text, ["x"])
    monkeypatch.setattr(stats, "wanted_lines", lambda t: t)
    assert filtered == stats.parse_vllm_metrics(text, ["x"])


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: p.stem)
def test_the_filtered_text_is_a_small_part(path):
    text = path.read_text()
    kept = stats.wanted_lines(text)
    assert "vllm:num_requests_waiting" in kept and "histogram" not in kept
    assert len(kept) < len(text) / 5
