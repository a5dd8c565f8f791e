"""README figures come from committed JSON; this fails when the two disagree."""

import json

from loadtests import readme_figures


def test_readme_figures_match_committed_results():
    assert readme_figures.main(["--check"]) == 0


def test_overhead_block_reflects_the_json():
    doc = json.loads((readme_figures.RESULTS / "overhead.json").read_text())
    block = readme_figures.overhead_block(doc)
    gw = doc["summary"]["owc-gateway"]
    assert f"{gw['tput_ratio']['median']:.2f}×" in block
    assert f"{gw['ttft_p50_s']['median'] * 1000:.1f}" in block
    assert f"Median of {doc['settings']['runs']} interleaved runs" in block
    met = "met" if doc["summary"]["verdict"]["tput_ok"] else "not met"
    assert f"Throughput ratio ≥ 0.90: **{met}**" in block


def test_readme_gives_the_two_setup_commands():
    text = readme_figures.README.read_text()
    assert "make serve" in text.split("##")[0] and "make test" in text.split("##")[0]
