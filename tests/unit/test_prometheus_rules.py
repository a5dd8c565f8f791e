"""cluster/metrics/prometheus (deploy/prometheus links to it): promtool accepts the config
and rules, and every alert has a firing and a non-firing case (`promtool test rules`,
generated from the table below so that the expected annotations are the rules' own
runbooks)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from cluster.metrics.monitor import prepare, rule_files
from tests.conftest import REPO
from tests.tools import tool

PROMETHEUS_DIR = REPO / "cluster" / "metrics" / "prometheus"
RULES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
ALERTS = {
    r["alert"]: r
    for f in RULES
    for g in yaml.safe_load(f.read_text())["groups"]
    for r in g["rules"]
    if "alert" in r
}

# alert -> (series firing, series quiet, eval time, labels when firing, summary when firing)
# The TTFT SLO bucket is 2.0 s (the config's default autoscaling.ttft_slo_s), labelled as
# prometheus_client renders it.
TTFT_BAD = [("owc_time_to_first_token_seconds_bucket{model=\"m\",le=\"2.0\"}", "0+50x90"),
            ("owc_time_to_first_token_seconds_count{model=\"m\"}", "0+100x90")]
TTFT_GOOD = [("owc_time_to_first_token_seconds_bucket{model=\"m\",le=\"2.0\"}", "0+100x90"),
             ("owc_time_to_first_token_seconds_count{model=\"m\"}", "0+100x90")]
CASES = {
    "OwcHighErrorRatio": (
        [('owc_requests_total{model="m",code="200",tenant="t",route="/v1/completions"}', "0+90x30"),
         ('owc_requests_total{model="m",code="502",tenant="t",route="/v1/completions"}', "0+10x30")],
        [('owc_requests_total{model="m",code="200",tenant="t",route="/v1/completions"}', "0+99x30"),
         ('owc_requests_total{model="m",code="502",tenant="t",route="/v1/completions"}', "0+1x30")],
        "20m", {"model": "m"}, "m: 10% of requests fail with 5xx",
    ),
    "OwcTTFTSLOBurnRateFast": (TTFT_BAD, TTFT_GOOD, "70m", {"model": "m"},
                               "m: time-to-first-token SLO error budget burning 14x too fast"),
    "OwcTTFTSLOBurnRateSlow": (TTFT_BAD, TTFT_GOOD, "85m", {"model": "m"},
                               "m: time-to-first-token SLO error budget burning 6x too fast"),
    "OwcNoHealthyReplica": (
        # A replica registered but unhealthy (or draining) answers no request either: the gateway's
        # 503 no_healthy_replica follows the routable count, not the registered one.
        [('owc_engine_replicas{model="m",instance="g:1"}', "1x10"), ('owc_engine_replicas_routable{model="m",instance="g:1"}', "0x10")],
        [('owc_engine_replicas{model="m",instance="g:1"}', "1x10"), ('owc_engine_replicas_routable{model="m",instance="g:1"}', "1x10")],
        "5m", {"model": "m"}, "m: no engine replica is routable",
    ),
    "OwcKVCacheSaturated": (
        [('vllm:kv_cache_usage_perc{model_name="m",instance="e:1"}', "0.97x20")],
        [('vllm:kv_cache_usage_perc{model_name="m",instance="e:1"}', "0.5x20")],
        "15m", {"model": "m", "model_name": "m"}, "m: engine KV cache 97% full",
    ),
    "OwcQueueGrowing": (
        # Rising to 25, then flat for the last minutes before the evaluation: the summary's
        # value does not depend on whether the alert group evaluates before or after the
        # recording group (promtool runs groups concurrently).
        [('vllm:num_requests_waiting{model_name="m",instance="e:1"}', "0+1x25 25x15")],
        [('vllm:num_requests_waiting{model_name="m",instance="e:1"}', "20x40")],
        "30m", {"model": "m", "model_name": "m"}, "m: 25 requests waiting in the engines and rising",
    ),
    "OwcCapacityControllerNotReconciling": (
        [("owc_controller_last_reconcile_timestamp_seconds", "0x20")],
        [("owc_controller_last_reconcile_timestamp_seconds", "0+60x20")],
        "15m", {}, "the capacity controller has not reconciled for 15m 0s",
    ),
    "OwcCapacityControllerBlind": (
        [('owc_controller_hold{model="m",reason="no_data"}', "1x20"), ('owc_controller_hold{model="m",reason="steady"}', "0x20")],
        [('owc_controller_hold{model="m",reason="no_data"}', "1x5 0x15"), ('owc_controller_hold{model="m",reason="steady"}', "0x5 1x15")],
        "15m", {"model": "m"}, "m: the capacity controller has held for missing signals for 10 minutes",
    ),
    "OwcTenancyStoreDown": (
        [('owc_tenancy_store_errors_total{instance="g:1"}', "0+60x20"), ('owc_tenancy_store_up{instance="g:1"}', "0x20")],
        [('owc_tenancy_store_errors_total{instance="g:1"}', "0+60x5 300x15"), ('owc_tenancy_store_up{instance="g:1"}', "0x5 1x15")],
        "10m", {"instance": "g:1"}, "gateway g:1 cannot reach its tenancy store",
    ),
    "OwcAuthFailureSpike": (
        [('owc_auth_failures_total{instance="g:1",code="invalid_api_key",throttled="true"}', "0+300x30")],
        [('owc_auth_failures_total{instance="g:1",code="invalid_api_key",throttled="false"}', "0+6x30")],
        "25m", {"instance": "g:1"}, "gateway g:1: 5 failed authentications/s",
    ),
    "OwcConnectionsRefused": (
        [('owc_connections_closed_total{instance="g:1",reason="over_capacity"}', "0+120x30")],
        [('owc_connections_closed_total{instance="g:1",reason="header_timeout"}', "0+120x30")],
        "20m", {"instance": "g:1"}, "gateway g:1: 2 connections/s closed or refused at the connection bound",
    ),
    "OwcAdapterLoadsFailing": (
        [('owc_adapter_loads_total{instance="g:1",model="m",result="failed"}', "0+1x30")],
        [('owc_adapter_loads_total{instance="g:1",model="m",result="ok"}', "0+1x30"),
         ('owc_adapter_loads_total{instance="g:1",model="m",result="failed"}', "0x30")],
        "20m", {"model": "m"}, "model m: LoRA adapter loads are failing",
    ),
    "OwcRolloutRolledBack": (
        [('owc_rollout_state{instance="g:1",model="m",state="rolled_back"}', "0x2 1x10"),
         ('owc_rollout_state{instance="g:2",model="m",state="rolled_back"}', "0x2 1x10")],
        [('owc_rollout_state{instance="g:1",model="m",state="rolled_back"}', "0x12"),
         ('owc_rollout_state{instance="g:1",model="m",state="promoted"}', "0x2 1x10")],
        "5m", {"model": "m"}, "m: the candidate version was rolled back",
    ),
    "OwcRolloutAborted": (
        [('owc_rollout_state{instance="g:1",model="m",state="aborted"}', "0x2 1x10")],
        [('owc_rollout_state{instance="g:1",model="m",state="aborted"}', "0x12"),
         ('owc_rollout_state{instance="g:1",model="m",state="rolled_back"}', "0x2 1x10")],
        "5m", {"model": "m"}, "m: the rollout of its candidate version was aborted",
    ),
    "OwcScrapeTargetDown": (
        [('up{job="owc-engine",instance="e:1"}', "0x10")],
        [('up{job="owc-engine",instance="e:1"}', "1x10")],
        "10m", {"job": "owc-engine", "instance": "e:1"}, "owc-engine target e:1 is down",
    ),
}


def _case(alert: str, series, eval_time: str, expected: list[dict]) -> dict:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": [{"eval_time": eval_time, "alertname": alert, "exp_alerts": expected}],
    }


def test_every_alert_has_a_case_and_a_runbook():
    assert set(CASES) == set(ALERTS)
    for name, rule in ALERTS.items():
        assert rule["annotations"].get("runbook", "").strip(), name
        assert rule["annotations"].get("summary"), name
        assert rule["labels"]["severity"] in ("critical", "warning"), name


def test_promtool_check_rules_and_config(tmp_path):
    promtool = tool("promtool")
    r = subprocess.run([promtool, "check", "rules", *map(str, RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = prepare(tmp_path / "run", tmp_path / "sd")
    r = subprocess.run([promtool, "check", "config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_prepare_copies_the_shipped_rules(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "rules").symlink_to(tmp_path, target_is_directory=True)  # as earlier versions left it
    prepare(run, tmp_path / "sd", interval_s=2)
    assert not (run / "rules").is_symlink()
    assert {f.name for f in (run / "rules").iterdir()} == {f.name for f in rule_files()} == {f.name for f in RULES}
    for f in RULES:
        assert (run / "rules" / f.name).read_text() == f.read_text()
    assert (run / "targets").resolve() == (tmp_path / "sd").resolve()
    cfg = yaml.safe_load((run / "prometheus.yml").read_text())
    assert cfg["global"]["scrape_interval"] == "2s" and cfg["rule_files"] == ["rules/*.yml"]


def test_the_ttft_slo_bucket_is_the_configs_default_and_a_gateway_bucket():
    """The rules' SLO bucket is autoscaling.ttft_slo_s's default, and the gateway's TTFT
    histogram exports that bucket (under the same label): otherwise the SLO rules are empty."""
    from prometheus_client import CollectorRegistry

    from cluster.config.schema import Autoscaling
    from cluster.gateway.observability.metrics import GatewayMetrics

    le = str(Autoscaling.model_fields["ttft_slo_s"].default)  # 2.0 -> "2.0", as prometheus_client renders it
    recording = (PROMETHEUS_DIR / "rules" / "owc-recording.yml").read_text()
    assert recording.count(f'owc_time_to_first_token_seconds_bucket{{le="{le}"}}') == 2
    registry = CollectorRegistry()
    GatewayMetrics(registry).ttft.labels(model="m", version="stable").observe(0.1)
    exported = {s.labels["le"] for fam in registry.collect() if fam.name == "owc_time_to_first_token_seconds"
                for s in fam.samples if s.name.endswith("_bucket")}
    assert le in exported, f"the gateway's TTFT histogram has no {le} s bucket: {sorted(exported, key=float)}"


@pytest.mark.parametrize("alert", sorted(CASES))
def test_promtool_alert_fires_and_stays_quiet(alert, tmp_path: Path):
    firing, quiet, at, labels, summary = CASES[alert]
    rule = ALERTS[alert]
    expected = [{
        "exp_labels": {"severity": rule["labels"]["severity"], **labels},
        "exp_annotations": {"summary": summary, "runbook": rule["annotations"]["runbook"]},
    }]
    spec = {
        "rule_files": [str(f) for f in RULES],
        "evaluation_interval": "1m",
        "tests": [_case(alert, firing, at, expected), _case(alert, quiet, at, [])],
    }
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    r = subprocess.run([tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_dead_controller_is_alerted(tmp_path: Path):
    """The controller's process dies: its series goes stale and its scrape fails. Not reconciling
    (replicas no longer follow load) must still alert, and its target must count as down."""
    spec = {
        "rule_files": [str(f) for f in RULES],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": "owc_controller_last_reconcile_timestamp_seconds", "values": "0+60x10 stale"},
                {"series": 'up{job="owc-controller",instance="c:1"}', "values": "1x10 0x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": "OwcCapacityControllerNotReconciling", "exp_alerts": [{
                    "exp_labels": {"severity": "warning"},
                    "exp_annotations": {"summary": "the capacity controller has not reconciled for 20m 0s",
                                        "runbook": ALERTS["OwcCapacityControllerNotReconciling"]["annotations"]["runbook"]}}]},
                {"eval_time": "30m", "alertname": "OwcScrapeTargetDown", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "job": "owc-controller", "instance": "c:1"},
                    "exp_annotations": {"summary": "owc-controller target c:1 is down",
                                        "runbook": ALERTS["OwcScrapeTargetDown"]["annotations"]["runbook"]}}]},
            ],
        }],
    }
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    r = subprocess.run([tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
