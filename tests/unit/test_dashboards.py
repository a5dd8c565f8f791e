"""cluster/metrics/grafana (deploy/grafana links to it): the committed dashboards are the
generator's output, panel ids are unique, panels fit the 24-column grid without
overlapping, and promtool parses every expression (wrapped as recording rules, Grafana's
variables filled in)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from cluster.metrics.dashboards import DASHBOARDS, OUT_DIR, render
from tests.tools import tool

VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$model": ".*"}


def promql(expr: str) -> str:
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in re.sub(r'"\$1"', "", expr), f"unknown Grafana variable in {expr}"
    return expr


def all_exprs() -> list[tuple[str, str, str]]:
    return [
        (d.uid, p["title"], t["expr"])
        for d in DASHBOARDS
        for p in render(d)["panels"]
        for t in p["targets"]
    ]


@pytest.mark.parametrize("d", DASHBOARDS, ids=lambda d: d.uid)
def test_committed_json_is_generated(d):
    committed = json.loads((OUT_DIR / f"{d.uid}.json").read_text())
    assert committed == render(d), "run `python -m cluster.metrics.dashboards --write`"


@pytest.mark.parametrize("d", DASHBOARDS, ids=lambda d: d.uid)
def test_panel_ids_and_layout(d):
    panels = render(d)["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not (cells & mine), f"panel {p['title']!r} overlaps another"
        cells |= mine
        assert p["targets"] and all(t["expr"] for t in p["targets"])
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))


def test_every_expression_passes_promtool(tmp_path):
    rules = [{"record": f"dashboard:check:{i}", "expr": promql(expr)} for i, (_, _, expr) in enumerate(all_exprs())]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    r = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(rules)} rules found" in r.stdout


def test_routable_panels_read_the_routable_gauge():
    """owc_engine_replicas counts registered replicas, unhealthy and draining ones included: a
    panel titled routable must read owc_engine_replicas_routable."""
    routable = [(title, expr) for _, title, expr in all_exprs() if "routable" in title.lower()]
    assert routable and any("owc_engine_replicas_routable" in e for _, e in routable), routable


def test_the_model_selector_lists_models_and_filters_vllms_own_panels():
    from cluster.gateway.observability.accounting import UNKNOWN

    for d in DASHBOARDS:
        (model,) = [v for v in render(d)["templating"]["list"] if v["name"] == "model"]
        # requests refused before their model was known are counted as model="unknown": not a model to pick
        assert f'model!="{UNKNOWN}"' in model["query"]
        for p in d.panels:
            for expr, _ in p.exprs:
                for selector in re.findall(r"vllm:\w+\{([^}]*)\}|vllm:\w+\[", expr):
                    assert 'model_name=~"$model"' in selector, (p.title, expr)  # vLLM labels its served name so
