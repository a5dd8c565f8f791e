"""Grafana dashboards, generated: Overview, Capacity, Tenants. The JSON under
cluster/metrics/grafana/ (package data; deploy/grafana links to it) is this module's output
(`python -m cluster.metrics.dashboards --write`); a test regenerates it, checks panel ids
and layout, runs every expression through promtool, and proves each one non-empty against
a live cluster."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "grafana"
DS = {"type": "prometheus", "uid": "${datasource}"}
M = 'model=~"$model"'


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[tuple[str, str], ...]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    description: str = ""
    # Metrics only some deployments export (e.g. GPU telemetry from DCGM's exporter).
    optional: str | None = None


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    tags: tuple[str, ...] = field(default=("owc",))


def _p(title: str, *exprs: tuple[str, str], **kw) -> Panel:
    return Panel(title=title, exprs=tuple(exprs), **kw)


OVERVIEW = Dashboard(
    uid="owc-overview",
    title="owc / Overview",
    description="SLOs, traffic, errors and tokens by model.",
    panels=(
        _p("Requests/s", (f"sum(rate(owc_requests_total{{{M}}}[$__rate_interval]))", "requests/s"), kind="stat", unit="reqps"),
        _p("5xx ratio", (f'(sum(rate(owc_requests_total{{{M},code=~"5.."}}[$__rate_interval])) or vector(0)) / sum(rate(owc_requests_total{{{M}}}[$__rate_interval]))', "5xx"),
           kind="stat", unit="percentunit"),
        _p("TTFT SLO attainment (first token ≤ 2.0 s)", (f"1 - max(owc:ttft_slo_miss_ratio:rate5m{{{M}}})", "attainment"),
           kind="stat", unit="percentunit", description="Share of streamed requests whose first token came within the 2.0 s SLO, worst model, last 5 minutes."),
        _p("Tokens/s (completion)", (f"sum(owc:completion_tokens_per_second:rate5m{{{M}}})", "tokens/s"), kind="stat", unit="short"),
        _p("Requests/s by model and status", (f"sum by (model, code) (rate(owc_requests_total{{{M}}}[$__rate_interval]))", "{{model}} {{code}}"), unit="reqps"),
        _p("Time to first token", (f"owc:ttft_seconds:p50{{{M}}}", "{{model}} p50"), (f"owc:ttft_seconds:p95{{{M}}}", "{{model}} p95"), unit="s"),
        _p("Inter-token latency", (f"owc:itl_seconds:p50{{{M}}}", "{{model}} p50"), (f"owc:itl_seconds:p95{{{M}}}", "{{model}} p95"), unit="s"),
        _p("Request duration p95 by route",
           (f"histogram_quantile(0.95, sum by (route, le) (rate(owc_request_duration_seconds_bucket{{{M}}}[$__rate_interval])))", "{{route}}"), unit="s"),
        _p("Tokens/s by model", (f"owc:completion_tokens_per_second:rate5m{{{M}}}", "{{model}} completion"),
           (f"owc:prompt_tokens_per_second:rate5m{{{M}}}", "{{model}} prompt"), unit="short"),
        _p("Errors by status", (f'sum by (model, code) (rate(owc_requests_total{{{M},code!~"2.."}}[$__rate_interval]))', "{{model}} {{code}}"), unit="reqps"),
        _p("Rejections by reason", (f"sum by (model, reason) (rate(owc_rejections_total{{{M}}}[$__rate_interval]))", "{{model}} {{reason}}"), unit="reqps"),
        _p("Retries by reason", (f"sum by (model, reason) (rate(owc_retries_total{{{M}}}[$__rate_interval]))", "{{model}} {{reason}}"), unit="reqps"),
        _p("Stream resumes", (f"sum by (model, result) (rate(owc_stream_resumes_total{{{M}}}[$__rate_interval]))", "{{model}} {{result}}"),
           unit="reqps", description="Streams whose engine broke after the first byte: resumed on another replica "
           "(the client saw one stream), or failed (ended with an error event: no replica could continue it)."),
        _p("Routing decisions by policy", (f"sum by (model, policy) (rate(owc_routing_decisions_total{{{M}}}[$__rate_interval]))", "{{model}} {{policy}}"), unit="ops"),
        _p("Routing decision time p99", ("histogram_quantile(0.99, sum by (policy, le) (rate(owc_routing_decision_seconds_bucket[$__rate_interval])))", "{{policy}}"), unit="s"),
        _p("Failed authentications", ("sum by (code, throttled) (rate(owc_auth_failures_total[$__rate_interval]))", "{{code}} throttled={{throttled}}"),
           unit="ops", description="401s by code; throttled=true: the client's address was over its failure budget and got 429."),
        _p("Client connections: held, and closed by the bounds", ("sum(owc_connections)", "held"),
           ("sum by (reason) (rate(owc_connections_closed_total[$__rate_interval]))", "closed: {{reason}}"),
           description="Held: all gateway processes. Closed per second by reason: deadlines (408), header size (431), "
           "evicted idle at the connection bound, refused over capacity (503)."),
        _p("Rollout: candidate weight and state", (f"max by (model) (owc_rollout_candidate_weight{{{M}}})", "{{model}} weight %"),
           (f"100 * max by (model, state) (owc_rollout_state{{{M},state=~\"paused|rolled_back|aborted\"}}) > 0", "{{model}} {{state}}"),
           description="During a rollout (docs/rollouts.md): the candidate's % of the model's traffic; a paused, rolled-back or "
           "aborted rollout shows its state at 100. `owc rollout status MODEL` names each gate's figures."),
        _p("Rollout: TTFT p95 and 5xx share by version",
           (f"histogram_quantile(0.95, sum by (model, version, le) (rate(owc_time_to_first_token_seconds_bucket{{{M}}}[$__rate_interval])))",
            "{{model}} {{version}} TTFT p95"),
           # 0, not no data, while a version answers no 5xx (`or` the total times 0)
           (f'(sum by (model, version) (rate(owc_requests_total{{{M},code=~"5.."}}[$__rate_interval])) or 0 * sum by '
            f"(model, version) (rate(owc_requests_total{{{M}}}[$__rate_interval]))) / sum by (model, version) "
            f"(rate(owc_requests_total{{{M}}}[$__rate_interval]))", "{{model}} {{version}} 5xx share"),
           description="Candidate against stable, as the rollout's gates compare them (over the step's window there)."),
        _p("Rollout: gates, the candidate's share of each limit",
           (f'max by (model, gate) (owc_rollout_gate{{{M},of="candidate"}}) / max by (model, gate) '
            f'(owc_rollout_gate{{{M},of="limit"}})', "{{model}} {{gate}}"),
           unit="percentunit", description="Each gate in the analysis' last window: the candidate's figure over its "
           "limit. Above 100 % the gate fails (a rollback names it); no line: the gate was not measured (no sample)."),
    ),
)

CAPACITY = Dashboard(
    uid="owc-capacity",
    title="owc / Capacity",
    description="Engine replicas desired vs running, queues, KV-cache and accelerator use.",
    panels=(
        _p("Engine replicas: desired vs running",
           ('sum by (deployment) (ray_serve_autoscaling_target_replicas{deployment=~"engine-.*"})', "{{deployment}} desired"),
           ('sum by (deployment) (ray_serve_deployment_replica_healthy{deployment=~"engine-.*"})', "{{deployment}} running (healthy)"),
           description="Desired: Ray Serve's replica target (what the capacity controller sets). Running: healthy replicas. "
                       "Every model's, whatever $model says: Ray Serve labels them by deployment (engine-<model>, "
                       "its name's other characters as -), not by model."),
        _p("Routable replicas (gateway view)", (f"owc_engine_replicas_routable{{{M}}}", "{{model}} {{instance}}"),
           (f"owc_engine_replicas{{{M}}}", "{{model}} {{instance}} registered"),
           description="Replicas each gateway routes new requests to (healthy, not draining), and all registered ones."),
        _p("Engine queue and running requests", (f"owc:engine_queue_depth:sum{{{M}}}", "{{model}} waiting"),
           (f"owc:engine_running:sum{{{M}}}", "{{model}} running")),
        _p("Gateway in flight and queued", (f"sum by (model) (owc_requests_in_flight{{{M}}})", "{{model}} in flight"),
           (f"sum by (model) (owc_requests_queued{{{M}}})", "{{model}} awaiting an engine")),
        _p("KV-cache use", (f"owc:kv_cache_usage:avg{{{M}}}", "{{model}} avg"), (f"owc:kv_cache_usage:max{{{M}}}", "{{model}} max"), unit="percentunit"),
        _p("Prefix-cache hit rate",
           ('sum by (model_name) (rate(vllm:prefix_cache_hits_total{model_name=~"$model"}[$__rate_interval])) / '
            'sum by (model_name) (rate(vllm:prefix_cache_queries_total{model_name=~"$model"}[$__rate_interval]))', "{{model_name}}"),
           unit="percentunit"),
        _p("Engine time to first token p95",
           ('histogram_quantile(0.95, sum by (model_name, le) (rate(vllm:time_to_first_token_seconds_bucket{model_name=~"$model"}[$__rate_interval])))',
            "{{model_name}}"), unit="s", description="vLLM's own, by served name (owc's model name)."),
        _p("Accelerator utilisation", ("avg by (Hostname, gpu) (DCGM_FI_DEV_GPU_UTIL)", "{{Hostname}} GPU {{gpu}}"), unit="percent",
           optional="GPU telemetry from NVIDIA's DCGM exporter; absent on CPU-only clusters."),
        _p("Capacity controller: replica target",
           (f"max by (model) (owc_controller_target_replicas{{{M}}})", "{{model}} decided"),
           (f"max by (model) (owc_controller_current_replicas{{{M}}})", "{{model}} in force"),
           optional="From `owc controller`, for models with autoscaling.enabled."),
        _p("Capacity controller: decisions by reason",
           (f"sum by (model, reason) (rate(owc_controller_decisions_total{{{M}}}[$__rate_interval]))", "{{model}} {{reason}}"),
           unit="ops", optional="From `owc controller`, for models with autoscaling.enabled."),
        _p("Capacity controller: holding, by reason",
           (f"max by (model, reason) (owc_controller_hold{{{M}}})", "{{model}} {{reason}}"),
           description="Why the last decision held (1 while it holds for that reason); `no_data`: "
                       "the controller cannot read the load from Prometheus and does not scale.",
           optional="From `owc controller`, for models with autoscaling.enabled."),
    ),
)

TENANTS = Dashboard(
    uid="owc-tenants",
    title="owc / Tenants",
    description="Usage by tenant (API key owner): requests, tokens, errors, limits hit.",
    panels=(
        _p("Requests/s by tenant", (f"sum by (tenant) (rate(owc_requests_total{{{M}}}[$__rate_interval]))", "{{tenant}}"), unit="reqps"),
        _p("Completion tokens/s by tenant", (f"sum by (tenant) (rate(owc_completion_tokens_total{{{M}}}[$__rate_interval]))", "{{tenant}}")),
        _p("Prompt tokens/s by tenant", (f"sum by (tenant) (rate(owc_prompt_tokens_total{{{M}}}[$__rate_interval]))", "{{tenant}}")),
        _p("Reasoning tokens/s by tenant", (f"sum by (tenant) (rate(owc_reasoning_tokens_total{{{M}}}[$__rate_interval]))", "{{tenant}}"),
           description="Reasoning tokens (gpt-oss's analysis channel), part of the completion tokens; generated and "
                       "paid for under the reasoning policy strip too."),
        _p("Tokens in range by tenant", (f"sum by (tenant) (increase(owc_completion_tokens_total{{{M}}}[$__range]) + increase(owc_prompt_tokens_total{{{M}}}[$__range]))", "{{tenant}}"),
           kind="stat"),
        _p("Rate-limited (429) by tenant", (f'sum by (tenant) (rate(owc_requests_total{{{M},code="429"}}[$__rate_interval]))', "{{tenant}}"), unit="reqps"),
        _p("Errors by tenant and status", (f'sum by (tenant, code) (rate(owc_requests_total{{{M},code=~"[45].."}}[$__rate_interval]))', "{{tenant}} {{code}}"), unit="reqps"),
        _p("Token quota used by tenant (day, month)", ("max by (tenant, period) (owc_tenant_quota_used_ratio)", "{{tenant}} {{period}}"),
           unit="percentunit"),
        _p("Tenancy store up (min over gateways)", ("min(owc_tenancy_store_up)", "store up"), kind="stat",
           description="1: every gateway process reaches the shared tenancy store (Redis). 0: one applies "
                       "gateway.store.on_failure, or no store is configured (each process then counts its tenants' "
                       "limits alone: the chart's tenancyStore.mode none)."),
        _p("Fair queue: requests waiting by tenant", (f"sum by (tenant) (owc_fair_queue_depth{{{M}}})", "{{tenant}}"),
           description="Requests the gateways hold for an engine slot (gateway.fair_sharing), all gateway processes."),
        _p("Fair queue: wait p95 by tenant",
           (f"histogram_quantile(0.95, sum by (tenant, le) (rate(owc_fair_queue_wait_seconds_bucket{{{M}}}[$__rate_interval])))",
            "{{tenant}}"), unit="s",
           description="Time before an engine slot; a light tenant stays near 0 while a flooding one waits behind its own backlog."),
        _p("Batch: lines done/s by tenant and outcome",
           ("sum by (tenant, outcome) (rate(owc_batch_lines_total[$__rate_interval]))", "{{tenant}} {{outcome}}"),
           ("sum by (tenant) (rate(owc_batch_tokens_total[$__rate_interval]))", "{{tenant}} tokens/s"),
           description="Batch API lines (docs/batch.md) run on idle engine slots: ok (output file), error (error "
                       "file), duplicate (a line another gateway process had finished); and their tokens.",
           optional="Only once a batch has run."),
        _p("Batch: backlog",
           ("max(owc_batch_lines_pending)", "lines pending"),
           ("max by (status) (owc_batch_batches)", "batches {{status}}"),
           (f"sum(owc_batch_lines_in_flight{{{M}}})", "lines in flight"),
           (f"sum(owc_batch_lines_allowed{{{M}}})", "lines allowed by the interactive TTFT"),
           description="Lines of open batches not done yet, batches with work left by status, lines on engines "
                       "now (not counted in owc_requests_in_flight: a backlog scales nothing up), and the lines the "
                       "gateways may run as their interactive requests' TTFT allows (batch.ttft_tolerance)."),
    ),
)

DASHBOARDS = (OVERVIEW, CAPACITY, TENANTS)


def render(d: Dashboard) -> dict:
    panels, x, y, row_h = [], 0, 0, 0
    for i, p in enumerate(d.panels, start=1):
        w, h = (6, 5) if p.kind == "stat" else (12, 8)
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        panel = {
            "id": i,
            "type": p.kind,
            "title": p.title,
            "description": p.description or (p.optional or ""),
            "datasource": DS,
            "gridPos": {"x": x, "y": y, "w": w, "h": h},
            "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"]}} if p.kind == "stat" else {"legend": {"showLegend": True}},
            "targets": [
                {"refId": chr(ord("A") + j), "datasource": DS, "expr": expr, "legendFormat": legend}
                for j, (expr, legend) in enumerate(p.exprs)
            ],
        }
        panels.append(panel)
        x, row_h = x + w, max(row_h, h)
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": list(d.tags),
        "schemaVersion": 39,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            {"name": "model", "type": "query", "datasource": DS, "query": 'label_values(owc_requests_total{model!="unknown"}, model)',
             "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "refresh": 2},
        ]},
        "panels": panels,
    }


def write(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in DASHBOARDS:
        path = out_dir / f"{d.uid}.json"
        path.write_text(json.dumps(render(d), indent=2, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true", help=f"write the dashboards to {OUT_DIR}")
    a = ap.parse_args()
    if a.write:
        for p in write():
            print(p)
    else:
        print(json.dumps([render(d) for d in DASHBOARDS], indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
