"""The scrape parser reads only the families it needs (cluster.routing.stats.wanted_lines, and
wanted_families on the bytes a scrape reads): on vLLM's own /metrics texts (recorded,
tests/unit/data/*.prom) the stats are those of a parse of the whole text, and the filtered
text is a small part of it."""

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


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: p.stem)
def test_the_bytes_search_keeps_what_the_line_filter_keeps(path, monkeypatch):
    data = path.read_bytes()
    kept = stats.wanted_families(data)
    assert "# TYPE vllm:num_requests_running gauge" in kept and "histogram" not in kept
    assert "vllm:num_requests_waiting_by_reason" not in kept  # a family whose name starts like a kept one
    assert len(kept) < len(data) / 5
    by_bytes = stats.parse_vllm_metrics(data, ["x"])
    assert by_bytes == stats.parse_vllm_metrics(data.decode(), ["x"])
    monkeypatch.setattr(stats, "wanted_lines", lambda t: t)
    assert by_bytes == stats.parse_vllm_metrics(data.decode(), ["x"])


def test_bytes_without_type_lines_go_through_the_line_filter():
    data = b"vllm:num_requests_waiting 2.0\nvllm:num_requests_running 1.0\nvllm:kv_cache_usage_perc 0.5\n"
    s = stats.parse_vllm_metrics(data)
    assert (s.waiting, s.running, s.kv_usage) == (2.0, 1.0, 0.5)


def test_a_kept_family_last_in_the_text_is_read_to_its_end():
    data = (b"# HELP a x\n# TYPE a counter\na 1.0\n# HELP vllm:num_requests_running r\n"
            b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine=\"0\"} 3.0\n"
            b"vllm:num_requests_running{engine=\"1\"} 4.0")
    assert stats.parse_vllm_metrics(data).running == 7.0
