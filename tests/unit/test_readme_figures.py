"""README and docs figures come from committed JSON; this fails when a page and the JSON disagree.

Also: the README stays a front door (its set-up commands first, at most 400 lines), and every
relative Markdown link in README.md and docs/ points at a file (and heading) that exists.
"""

import json
import re
from pathlib import Path

import pytest

from loadtests import readme_figures


def test_readme_figures_match_committed_results():
    assert readme_figures.main(["--check"]) == 0


def test_every_page_is_checked_and_every_block_has_a_page():
    pages = readme_figures.pages()
    assert readme_figures.README in pages
    assert readme_figures.DOCS / "benchmarks.md" in pages and readme_figures.DOCS / "faults.md" in pages
    text = "\n".join(p.read_text() for p in pages)
    for name, (file, _) in readme_figures.BLOCKS.items():
        if name in readme_figures.OPTIONAL and not (readme_figures.RESULTS / file).exists():
            continue
        assert f"<!-- figures:{name} -->" in text, f"no page holds the figures:{name} block"


def _copy_of_the_pages(tmp_path, monkeypatch) -> Path:
    """README.md and docs/ copied under tmp_path, which the module then takes for the repository."""
    for page in readme_figures.pages():
        copy = tmp_path / page.relative_to(readme_figures.REPO)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(page.read_text())
    monkeypatch.setattr(readme_figures, "REPO", tmp_path)
    monkeypatch.setattr(readme_figures, "README", tmp_path / "README.md")
    monkeypatch.setattr(readme_figures, "DOCS", tmp_path / "docs")
    return tmp_path


@pytest.mark.parametrize("page", [p.relative_to(readme_figures.REPO) for p in readme_figures.pages()
                                  if "<!-- figures:" in p.read_text()], ids=str)
def test_a_page_that_disagrees_with_its_json_fails(page, tmp_path, monkeypatch):
    """A rendered block edited by hand fails --check, whichever page holds it; --write mends it."""
    root = _copy_of_the_pages(tmp_path, monkeypatch)
    assert readme_figures.main(["--check"]) == 0
    text = (root / page).read_text()
    name = re.search(r"<!-- figures:([\w-]+) -->", text).group(1)
    (root / page).write_text(text.replace(f"<!-- figures:{name} -->\n", f"<!-- figures:{name} -->\ntampered\n", 1))
    assert readme_figures.main(["--check"]) == 1
    assert readme_figures.main(["--write"]) == 0
    assert (root / page).read_text() == text


def test_a_block_on_no_page_fails(tmp_path, monkeypatch):
    root = _copy_of_the_pages(tmp_path, monkeypatch)
    page = root / "docs" / "faults.md"
    page.write_text(re.sub(r"<!-- figures:faults -->.*?<!-- /figures:faults -->\n", "", page.read_text(), flags=re.S))
    with pytest.raises(SystemExit):
        readme_figures.main(["--check"])


def test_links_in_docs_blocks_are_relative_to_their_page():
    capacity = (readme_figures.DOCS / "capacity.md").read_text()
    assert "](../loadtests/results/autoscaling-bursts-steady-seed2.png)" in capacity


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


def test_the_readme_is_a_front_door():
    text = readme_figures.README.read_text()
    assert len(text.splitlines()) <= 400
    for words in ("replica-hours", "round-robin", "prefix", "Faults survived", "previous_response_id", "strip",
                  "fair", "gateway processes", "Redis"):
        assert words in text, words
    index = (readme_figures.DOCS / "README.md").read_text()
    for page in sorted(readme_figures.DOCS.glob("*.md")):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not list {page.name}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out, fence = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        m = None if fence else re.match(r"#{1,6} (.+)", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(page: Path):
    text, fence = [], False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        if not fence:
            text.append(re.sub(r"`[^`]*`", "", line))  # code spans hold no links
    yield from re.findall(r"\]\(([^)\s]+)\)", "\n".join(text))


@pytest.mark.parametrize("page", readme_figures.pages(), ids=lambda p: str(p.relative_to(readme_figures.REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"


def test_the_overhead_summary_pairs_owcs_cpu_with_the_routers_per_run():
    """The CPU table's owc ÷ vllm-router is each run's ratio (the router's own figure moves
    between runs), not the ratio of the medians."""
    from loadtests.overhead import summarise

    def result(ttft: float, tput: float, cpu: float | None = None) -> dict:
        out = {"ttft_c1": {"ttft_p50_s": ttft, "errors": 0}, "tput_c16": {"output_tokens_per_s": tput, "errors": 0}}
        return out | ({"cpu_s_per_1k_tokens": cpu} if cpu is not None else {})

    runs = [{"results": {"bare-vllm": result(1, 100), "owc-gateway": result(1, 90, 0.05), "vllm-router": result(1, 80, 0.10)}},
            {"results": {"bare-vllm": result(1, 100), "owc-gateway": result(1, 90, 0.09), "vllm-router": result(1, 80, 0.06)}}]
    s = summarise(runs, ["bare-vllm", "owc-gateway", "vllm-router"])
    assert s["owc-gateway"]["cpu_vs_router"] == {"median": 1.0, "min": 0.5, "max": 1.5, "n": 2}
    assert "cpu_vs_router_long" not in s["owc-gateway"] and "cpu_vs_router" not in s["vllm-router"]
    assert s["owc-gateway"]["cpu_s_per_1k_tokens"]["median"] / s["vllm-router"]["cpu_s_per_1k_tokens"]["median"] != 1.0
