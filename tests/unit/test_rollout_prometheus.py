"""The rollout window's PromQL (cluster.rollouts.prometheus) evaluated by Prometheus's own
engine (`promtool test rules`) on synthetic gateway series: each query gives the figure the
local analysis computes from the same counters (requests, 5xx, TTFT p95)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import yaml

from cluster.capacity.rollout import histogram_quantile
from cluster.rollouts.prometheus import window_queries
from tests.tools import tool

SEL = 'model="tiny",version="candidate"'
SERIES = [  # one gateway pod scraped every 5 s for 2 minutes: 2 requests/s, a tenth of them 502
    (f'owc_requests_total{{{SEL},code="200"}}', "0+9x24"),
    (f'owc_requests_total{{{SEL},code="502"}}', "0+1x24"),
    ('owc_requests_total{model="tiny",version="stable",code="200"}', "0+50x24"),  # not the candidate's
    ('owc_requests_total{model="other",version="candidate",code="500"}', "0+50x24"),  # not the model's
    (f'owc_time_to_first_token_seconds_bucket{{{SEL},le="0.1"}}', "0+5x24"),
    (f'owc_time_to_first_token_seconds_bucket{{{SEL},le="0.5"}}', "0+10x24"),
    (f'owc_time_to_first_token_seconds_bucket{{{SEL},le="+Inf"}}', "0+10x24"),
]


def test_window_queries_give_the_local_analysis_figures(tmp_path: Path):
    q = window_queries("tiny", "candidate", 60)
    p95 = histogram_quantile(0.95, {0.1: 60.0, 0.5: 120.0, math.inf: 120.0})  # the window's bucket increases
    assert abs(p95 - 0.46) < 1e-9
    expected = {"requests": 120.0, "errors": 12.0, "ttft_p95_s": p95}
    spec = {"evaluation_interval": "5s", "tests": [{
        "interval": "5s",
        "input_series": [{"series": s, "values": v} for s, v in SERIES],
        "promql_expr_test": [{"expr": f"round({q[name]}, 0.0001)", "eval_time": "120s",
                              "exp_samples": [{"labels": "{}", "value": round(value, 4)}]}
                             for name, value in expected.items()]
        + [{"expr": q["itl_p95_s"], "eval_time": "120s", "exp_samples": []}],  # no ITL series: nothing
    }]}
    path = tmp_path / "window.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    r = subprocess.run([tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
