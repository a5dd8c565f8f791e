"""docs/metrics.md is the metric contract: every gateway metric it lists exists in the code
with that type and those labels (and no other gateway metric exists), and every metric the
rules and dashboards use is listed."""

from __future__ import annotations

import re
import tempfile
from types import SimpleNamespace

import yaml
from prometheus_client import CollectorRegistry

from cluster.config.loader import parse_config
from cluster.gateway.batches.wiring import Backlog, runner_hooks
from pathlib import Path

from cluster.discovery.endpoints import Endpoint
from cluster.discovery.rollouts import RolloutFiles
from cluster.gateway.rollout.view import RolloutView
from cluster.gateway.upstream.adapter_loader import record_adapter_requests
from cluster.gateway.upstream.stats_share import StatsShareMetrics
from cluster.gateway.observability.metrics import GatewayMetrics
from cluster.routing.router import Routing
from cluster.routing.stats import StatsStore
from cluster.metrics.dashboards import DASHBOARDS, render
from tests.conftest import REPO

DOC = REPO / "docs" / "metrics.md"
ROW = re.compile(r"^\| `([^`]+)` \| (\w+) \| ([^|]*) \| (.+) \|$")
NAME = re.compile(r"\b(owc_[a-z_]+|owc:[a-z0-9_:]+|vllm:[a-z_]+|ray_serve_[a-z_]+|DCGM_[A-Z_]+|up)\b(?!\s*\()")


def contract() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            labels = tuple(sorted(x.strip() for x in m.group(3).split(",") if x.strip() not in ("", "—")))
            assert m.group(1) not in rows, f"{m.group(1)} listed twice"
            rows[m.group(1)] = (m.group(2), labels)
    return rows


def gateway_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    registry = CollectorRegistry()
    g = GatewayMetrics(registry, replicas=lambda: [("m", 1, 1)])
    g.init_models({"m": "p"}, ["filter:healthy"])
    # owc_adapter_requests_total: defined with the adapter loader, on the same registry (cluster.gateway.app)
    cfg = parse_config({"models": {"m": {"source": "external", "adapters": {"fr": {}}}}, "gateway": {"api_keys_env": None}})
    record_adapter_requests(registry, Routing({}, stats=StatsStore(stale_after_s=1)), cfg)
    # owc_rollout_*: a model with a candidate's rollout, read from the analysis's state (cluster.gateway.app)
    rolled = parse_config({"models": {"m": {"source": "external", "candidate": {"source": "other"}}}})
    files = RolloutFiles(Path(tempfile.mkdtemp(prefix="owc-contract-")))
    files.write("m", {"state": "analysing", "weight": 10, "gates": [  # a last window's gates
        {"name": "max_ttft_p95_ratio", "stable": 0.1, "candidate": 0.2, "limit": 0.15, "passed": False}]})
    view = RolloutView(rolled, files, draw=lambda: 0.99)  # 99 >= weight 10: stable picked, every run
    view.reload()
    registry.register(view)
    view.pick("m", None, [Endpoint("m", "r", "http://x", version="candidate")])  # stable picked, absent: a fallback
    for h in (g.duration.labels("m", "/r"), g.ttft.labels("m", "stable"), g.itl.labels("m", "stable"), g.decision_seconds.labels("p"),
              g.adapter_load_seconds.labels("m"), g.fair_wait.labels("m", "t")):
        h.observe(0.1)
    g.tenant_quota_used.labels("t", "day").set(0.5)
    # owc_batch_*: the batch runner's, on the same registry (cluster.gateway.batches.wiring)
    hooks, on_tokens = runner_hooks(registry)
    hooks.line("t", "ok"), hooks.closed("completed"), on_tokens("t", 1)
    registry.register(Backlog(SimpleNamespace(backlog={"in_progress": 1}, pending=3)))
    # owc_routing_stats_*: the stats poller's, on the same registry (cluster.gateway.app)
    stats = StatsShareMetrics(registry)
    stats.round("scraped"), stats.errors.inc()
    g.fair_depth.labels("m", "t").set(1)
    for c in (g.prompt_tokens.labels("m", "t", "stable"), g.completion_tokens.labels("m", "t", "stable"),
              g.reasoning_tokens.labels("m", "t", "stable"), g.requests.labels("m", "t", "/r", "200", "stable"),
              g.mirror_dropped.labels("m"),  # mirror mode's (cluster.gateway.rollout.mirror)
              g.batch_paced.labels("m"),  # set while batch lines wait (cluster.gateway.flowcontrol.batch_pacer)
              g.fair_preemptions.labels("m", "t")):  # a slot taken back (cluster.gateway.flowcontrol.preemption)
        c.inc()
    out = {}
    for fam in registry.collect():
        name = fam.name + ("_total" if fam.type == "counter" else "")
        labels: set[str] = set()
        for s in fam.samples:
            labels |= set(s.labels) - {"le"}
        out[name] = (fam.type, tuple(sorted(labels)))
    return out


def test_gateway_metrics_match_the_table():
    table = {n: v for n, v in contract().items() if n.startswith("owc_") and not n.startswith("owc_controller_")}
    assert table == gateway_metrics()


def test_controller_metrics_match_the_table():
    from cluster.capacity.controller import ControllerMetrics

    registry = CollectorRegistry()
    m = ControllerMetrics(registry)
    m.target.labels("m")
    m.current.labels("m")
    m.decisions.labels("m", "up:load")
    m.errors.labels("m")
    m.rebuilds.labels("m", "prometheus")
    m.held("m", "no_data")
    out = {}
    for fam in registry.collect():
        name = fam.name + ("_total" if fam.type == "counter" else "")
        labels: set[str] = set()
        for smp in fam.samples:
            labels |= set(smp.labels)
        out[name] = (fam.type, tuple(sorted(labels)))
    table = {n: v for n, v in contract().items() if n.startswith("owc_controller_")}
    assert table == out


def _base(name: str) -> str:
    return re.sub(r"_(bucket|count|sum)$", "", name)


def test_rules_and_dashboards_use_only_listed_metrics():
    listed = set(contract())
    used: dict[str, str] = {}
    for f in (REPO / "cluster" / "metrics" / "prometheus" / "rules").glob("*.yml"):
        for g in yaml.safe_load(f.read_text())["groups"]:
            for r in g["rules"]:
                for n in NAME.findall(r["expr"]):
                    used.setdefault(_base(n), f.name)
                if "record" in r:
                    assert r["record"] in listed, f"recording rule {r['record']} missing from {DOC.name}"
    for d in DASHBOARDS:
        for p in render(d)["panels"]:
            for t in p["targets"]:
                for n in NAME.findall(t["expr"]):
                    used.setdefault(_base(n), d.uid)
    missing = {n: where for n, where in used.items() if n not in listed}
    assert not missing, f"metrics used but not in {DOC.name}: {missing}"


def test_dashboards_filter_by_model_only_metrics_with_a_model_label():
    """Grafana's $model is `.*` for All, which also matches a missing label: a selector
    `model=~"$model"` on a metric without `model` works until an operator picks a model, then
    its panel shows no data."""
    table = contract()
    selector = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
    wrong = set()
    for d in DASHBOARDS:
        for p in render(d)["panels"]:
            for t in p["targets"]:
                for name, matchers in selector.findall(t["expr"]):
                    base = name if name in table else _base(name)
                    if 'model=~"$model"' in matchers and base in table and "model" not in table[base][1]:
                        wrong.add((d.uid, p["title"], base))
    assert not wrong, sorted(wrong)


def test_every_rejection_reason_is_named_in_the_table():
    """The reasons a dashboard or alert may filter on: each one the gateway creates at 0, and the
    closed tenancy store's, is named in owc_rejections_total's row (insufficient_quota was not)."""
    from cluster.gateway.observability.metrics import REJECTION_REASONS

    row = next(line for line in DOC.read_text().splitlines() if line.startswith("| `owc_rejections_total`"))
    missing = [r for r in (*REJECTION_REASONS, "tenancy_store_unavailable") if f"`{r}`" not in row]
    assert missing == []
