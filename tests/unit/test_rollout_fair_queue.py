"""A request that waits in the fair queue during a rollout is answered by the version it was
picked for (cluster.gateway.forwarder's slot pick): the queue grants on the room of the
model's replicas of every version, and the grant must not move it to the other version's."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import fake_engine_argv, metric, wait_for
from tests.unit.rollout_helpers import rollout_stack


def test_requests_queued_for_a_full_candidate_stay_on_the_candidate(tmp_path):
    cfg = {"models": {"q": {"source": "external", "engine_kwargs": {"max_num_seqs": 1},
                            "candidate": {"engine_kwargs": {"max_num_seqs": 1}}, "rollout": {"conformance": False}}},
           "model_cache_dir": str(tmp_path), "gateway": {"api_keys_env": None}}
    env = {"OWC_ENGINE_KEY": "k", "OWC_ROLLOUT_DIR": str(tmp_path / "rollouts")}
    engines = {("q", "stable"): fake_engine_argv("q"), ("q", "candidate"): fake_engine_argv("q", ttft_ms=600)}
    with rollout_stack(tmp_path, cfg, engines, env) as (gw, procs, files, _):
        files.write("q", {"model": "q", "state": "analysing", "step": 1, "weight": 100})  # every request: candidate
        wait_for(lambda: metric(gw.metrics_url, "owc_rollout_candidate_weight", model="q") == 100, 10, "weight 100")

        def ask(i: int) -> tuple[int, str | None]:
            body = {"model": "q", "prompt": f"p{i}", "max_tokens": 4, "stream": True}
            with httpx.stream("POST", gw.url + "/v1/completions", json=body, timeout=30) as r:
                r.read()
                return r.status_code, r.headers.get("x-owc-version")

        # 1 slot + a dispatch margin of 2 on the candidate: 3 go at once, the other 5 wait for it
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(8)))
        assert answers == [(200, "candidate")] * 8
        assert metric(procs[("q", "stable")].url, "owc_fake_generation_requests_total") == 0
        assert metric(procs[("q", "candidate")].url, "owc_fake_generation_requests_total") == 8
