"""The real-run report (loadtests/autoscaling_real.py): how a run's samples and decisions become
its SLO, replica-hours, scale events, peak and start-ups; the dilated profile; and the docs
block rendered from the committed result."""

import json

import pytest

from cluster.capacity.simulator import EngineProfile
from loadtests import autoscaling_real, readme_figures


def test_summarise_table():
    reqs = [{"t": 0.0, "lag_s": 0.0, "ok": True, "ttft_s": 0.2},
            {"t": 1.0, "lag_s": 0.1, "ok": True, "ttft_s": 1.5},  # late: a miss
            {"t": 2.0, "lag_s": 0.0, "ok": False, "ttft_s": None, "error": "HTTP 503"},  # failed: a miss
            {"t": 3.0, "lag_s": 0.0, "ok": True, "ttft_s": 1.0}]  # at the SLO: within
    samples = [{"t": 0.0, "replicas": 1, "running": 1}, {"t": 1800.0, "replicas": 3, "running": 1},
               {"t": 1810.0, "replicas": 3, "running": 3}, {"t": 3600.0, "replicas": 2, "running": 2},
               {"t": 7200.0, "replicas": 9, "running": 9}]  # after the end: not counted
    decisions = [{"t": 0.0, "from": 1, "to": 1, "reason": "hold:no_data"},
                 {"t": 1800.0, "from": 1, "to": 3, "reason": "up:burst"},
                 {"t": 3600.0, "from": 3, "to": 2, "reason": "down:low_load"}]
    r = autoscaling_real.summarise(reqs, samples, decisions, slo_s=1.0, end=3600.0)
    assert r["attainment"] == 0.5 and r["failed"] == 1 and r["errors"] == ["HTTP 503"]
    # 1 replica for half an hour, 3 for 10 s, 3 for 1790 s
    assert r["replica_hours"] == pytest.approx((1 * 1800 + 3 * 10 + 3 * 1790) / 3600)
    assert r["scale_events"] == 2 and r["peak_replicas"] == 3
    assert r["startups_s"] == [10.0] and r["startup_median_s"] == 10.0
    assert r["holds_no_data"] == 1 and r["decisions_held"] == 1


def test_dilated_profile_serves_that_many_times_fewer_requests():
    p = EngineProfile(max_num_seqs=32, prefill_tokens_per_s=400_000, decode_step_base_s=0.002,
                      decode_step_per_seq_s=0.0001, startup_s=12.0, kv_capacity_tokens=32768)
    d = autoscaling_real.dilated(p, 20)
    assert d.capacity_rps(512, 128) == pytest.approx(p.capacity_rps(512, 128) / 20)
    assert d.startup_s == p.startup_s and d.max_num_seqs == p.max_num_seqs


def test_real_block_reflects_the_committed_result():
    doc = json.loads((readme_figures.RESULTS / readme_figures.AUTOSCALING_REAL).read_text())
    block = readme_figures.autoscaling_real_block(doc)
    real, sim = doc["real"], doc["simulated"]["owc"]
    assert f"| **owc, real** (Ray Serve, gateway, controller, Prometheus) | {real['attainment'] * 100:.2f}% |" in block
    assert f"| {sim['replica_hours']:.3f} | {sim['scale_events']} | {sim['peak_replicas']} |" in block
    assert doc["trace"]["sha256_16"] in block and "not vLLM" in block
