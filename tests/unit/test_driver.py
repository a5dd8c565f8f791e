import asyncio

import pytest

from cluster.bench.driver import RequestResult, SSEParser, percentile, run_closed_loop, sse_payloads, summarise
from tests.conftest import fake_engine_argv, server


@pytest.mark.parametrize(
    "values, q, expected",
    [([], 50, None), ([3.0], 99, 3.0), ([1, 2, 3, 4], 50, 2.5), ([1, 2, 3, 4], 0, 1), ([1, 2, 3, 4], 100, 4),
     ([4, 1, 3, 2], 25, 1.75), (list(range(101)), 99, 99.0), ([10, 20], 90, 19.0)],
)
def test_percentile(values, q, expected):
    assert percentile(values, q) == (pytest.approx(expected) if expected is not None else None)


def test_percentile_rejects_bad_q():
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_sse_parser_handles_split_and_joined_events():
    p = SSEParser()
    assert p.feed(b'data: {"a"') == []
    assert p.feed(b': 1}\n\ndata: {"b": 2}\n\nda') == ['{"a": 1}', '{"b": 2}']
    assert p.feed(b"ta: [DONE]\r\n\r\n") == ["[DONE]"]
    assert p.feed(b": keep-alive comment\n\n") == []


def test_sse_payloads_keep_json_whole_at_the_line_breaks_str_splitlines_knows():
    text = '{"text": "a\u2028b\x85c\u2029d"}'  # unescaped by JSON; httpx's iter_lines splits there
    chunks = [f"data: {text}\n\ndata: [DO".encode(), b"NE]\n\n"]
    assert list(sse_payloads(chunks)) == [text, "[DONE]"]


def test_summarise_counts_only_successes():
    results = [
        RequestResult(ok=True, status=200, ttft_s=0.1, e2e_s=1.0, itl_s=[0.01, 0.03], output_tokens=10),
        RequestResult(ok=True, status=200, ttft_s=0.3, e2e_s=2.0, itl_s=[0.02], output_tokens=20),
        RequestResult(ok=False, status=503, error="HTTP 503"),
    ]
    s = summarise("t", 2, results, duration_s=2.0)
    assert (s.ok, s.errors, s.output_tokens) == (2, 1, 30)
    assert s.output_tokens_per_s == 15 and s.requests_per_s == 1
    assert s.ttft_p50_s == pytest.approx(0.2) and s.itl_p50_s == pytest.approx(0.02)
    assert s.error_samples == ["HTTP 503"]


def test_driver_against_fake_engine_measures_configured_latency():
    with server(fake_engine_argv("m", ttft_ms=50, itl_ms=10)) as e:
        s = asyncio.run(run_closed_loop(e.url, "m", requests=8, concurrency=4, max_tokens=6))
    assert s.ok == 8 and s.output_tokens == 48
    assert 0.045 <= s.ttft_p50_s < 0.5
    assert 0.008 <= s.itl_p50_s < 0.2
