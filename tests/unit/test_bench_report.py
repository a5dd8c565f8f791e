"""`owc bench` end to end against the fake engine behind the gateway (the CI smoke run),
and the report writer's output."""

import json
import subprocess
import sys
from pathlib import Path

from cluster.bench.runner import _thin, spread
from tests.conftest import REPO, fake_engine_argv, gateway_argv, server


def test_thin_keeps_the_distribution():
    xs = [float(i) for i in range(10001)]
    t = _thin(xs, 101)
    assert len(t) == 101 and t[0] == 0 and t[-1] == 10000 and t[50] == 5000
    assert _thin([3.0, 1.0], 5) == [1.0, 3.0]
    assert spread([2.0, 1.0, 3.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3} and spread([]) is None


def test_owc_bench_smoke_through_the_gateway(tmp_path):
    """The CI smoke run: one scenario, real HTTP, JSON + Markdown + PNG out, in seconds."""
    with server(fake_engine_argv("fake-model", ttft_ms=5, itl_ms=2)) as engine, server(gateway_argv(f"fake-model={engine.url}")) as gw:
        p = subprocess.run(
            [sys.executable, "-m", "cluster.cli", "bench", "smoke", "--target", gw.url, "--out", str(tmp_path)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
    assert p.returncode == 0, p.stderr
    doc = json.loads((tmp_path / "smoke.json").read_text())
    summary = doc["result"]["points"][0]["summary"]
    assert summary["requests"] == summary["ok"] == 8 and summary["output_tokens"] == 64
    assert summary["goodput"] == 1.0 and summary["errors_by_type"] == {}
    assert doc["result"]["model"] == "fake-model" and doc["command"].startswith("owc bench smoke")
    md = (tmp_path / "smoke.md").read_text()
    assert md.startswith("# smoke") and "| target | TTFT p50 ms" in md
    png = (tmp_path / "smoke.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_compare_report_renders_ratios(tmp_path):
    from cluster.bench.report import markdown, write_report

    stats = {
        "bare-vllm": {m: {"median": 0.01, "min": 0.009, "max": 0.011, "n": 2} for m in
                      ("ttft_p50_s", "ttft_p99_s", "itl_p50_s", "e2e_p99_s", "goodput")} | {"output_tokens_per_s": {"median": 1000, "min": 900, "max": 1100, "n": 2}, "errors": 0},
    }
    stats["owc-gateway"] = dict(stats["bare-vllm"]) | {
        "ttft_p50_s_ratio": {"median": 1.05, "min": 1.0, "max": 1.1, "n": 2},
        "output_tokens_per_s_ratio": {"median": 0.95, "min": 0.9, "max": 1.0, "n": 2},
    }
    doc = {
        "command": "owc bench x --compare", "scenario": {"name": "x", "description": "d", "slo": {"ttft_s": 1, "itl_s": 0.1},
                                                           "arrival": {"kind": "closed"}},
        "result": {"mode": "compare", "runs": 2, "baseline": "bare-vllm", "targets": {"bare-vllm": "u", "owc-gateway": "v"},
                   "points": [{"load": None, "stats": stats, "samples": {n: {"ttft_s": [0.01, 0.02], "itl_s": [0.001]} for n in stats}}]},
    }
    md = markdown(doc)
    assert "| owc-gateway | 10.0 (9.0–11.0)" in md and "1.05× (1.00×–1.10×)" in md and "0.95×" in md
    paths = write_report(doc, Path(tmp_path), "x-compare")
    assert [p.name for p in paths] == ["x-compare.json", "x-compare.md", "x-compare.png"]
