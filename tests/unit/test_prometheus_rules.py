"""deploy/prometheus: promtool accepts the config and rules, and every alert has a firing
and a non-firing case (`promtool test rules`, generated from the table below so that the
expected annotations are the rules' own runbooks)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from cluster.metrics.monitor import PROMETHEUS_DIR, prepare
from tests.tools import tool

RULES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
ALERTS = {
    r["alert"]: r
    for f in RULES
    for g in yaml.safe_load(f.read_text())["groups"]
    for r in g["rules"]
    if "alert" in r
}

# alert -> (series firing, series quiet, eval time, labels when firing, summary when firing)
TTFT_BAD = [("owc_time_to_first_token_seconds_bucket{model=\"m\",le=\"2.5\"}", "0+50x90"),
            ("owc_time_to_first_token_seconds_count{model=\"m\"}", "0+100x90")]
TTFT_GOOD = [("owc_time_to_first_token_seconds_bucket{model=\"m\",le=\"2.5\"}", "0+100x90"),
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
        [('owc_engine_replicas{model="m",instance="g:1"}', "0x10")],
        [('owc_engine_replicas{model="m",instance="g:1"}', "1x10")],
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
