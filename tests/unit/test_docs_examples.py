"""The examples a newcomer copies from README.md and docs/ run as written: the Batch API page's
SDK example against a gateway (fake engine, the runner on, Redis), API keys in the SDK examples
that an HTTP header can carry, every example config in deploy/ named on the configuration page,
and the README's headline intro dating its figures as their JSON does."""

from __future__ import annotations

import ast
import datetime
import json
import re

import pytest
import yaml

from tests.conftest import REPO, fake_engine_argv, gateway_argv, server

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_batch_example_runs_as_written(tmp_path, redis_server, monkeypatch):
    url, _ = redis_server
    cfg = {"models": {"m1": {"source": "external"}},
           "gateway": {"store": {"url": url}, "fair_sharing": {"store_url": url}, "access_log": {"enabled": False}},
           "batch": {"store_dir": str(tmp_path / "store"), "poll_period_s": 0.1}}
    (tmp_path / "owc.yaml").write_text(yaml.safe_dump(cfg))
    line = {"custom_id": "doc-1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m1", "messages": [{"role": "user", "content": "Summarise: ..."}], "max_tokens": 4}}
    (tmp_path / "requests.jsonl").write_text(json.dumps(line) + "\n")
    [code] = python_blocks((REPO / "docs" / "batch.md").read_text())
    with server(fake_engine_argv("m1")) as engine, \
            server(gateway_argv(f"m1={engine.url}", config=str(tmp_path / "owc.yaml"))) as gw:
        monkeypatch.chdir(tmp_path)  # open("requests.jsonl")
        exec(compile(code.replace("http://127.0.0.1:8000", gw.url), "docs/batch.md", "exec"), {})


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_sdk_examples_use_keys_a_header_can_carry(page):
    for code in python_blocks(page.read_text()):
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.keyword) and node.arg == "api_key" and isinstance(node.value, ast.Constant):
                assert node.value.value.isascii(), f"{page.name}: api_key={node.value.value!r} is not ASCII"


def test_every_example_config_is_named_on_the_configuration_page():
    text = (REPO / "docs" / "configuration.md").read_text()
    examples = text[text.index("## Examples"):text.index("## Engine and server arguments")]
    for path in sorted((REPO / "deploy").glob("*.yaml")):
        assert f"deploy/{path.name}" in examples, f"deploy/{path.name} is not among the configuration page's examples"


def test_the_headline_intro_dates_no_run_but_the_jsons():
    """A day named in prose above the headline table is the day of the overhead run it describes."""
    text = (REPO / "README.md").read_text()
    intro = text[text.index("## Headline figures"):text.index("<!-- figures:headline -->")]
    run = json.loads((REPO / "loadtests" / "results" / "overhead.json").read_text())
    day = datetime.datetime.fromtimestamp(run["created_unix"], datetime.timezone.utc).date()
    months = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
    for month, dd in re.findall(rf"\b({months})[a-z]* (\d{{1,2}})\b", intro):
        named = datetime.date(day.year, months.split("|").index(month) + 1, int(dd))
        assert named == day, f"the README says {month} {dd}; the overhead run is of {day}"
    for iso in re.findall(r"\b\d{4}-\d{2}-\d{2}\b", intro):
        assert datetime.date.fromisoformat(iso) == day, f"the README says {iso}; the overhead run is of {day}"
