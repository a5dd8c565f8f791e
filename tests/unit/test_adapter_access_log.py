"""The access log names the LoRA adapter a request used (review 10: every line said only the
base model, so a team could not find its adapter's requests, tokens or errors there)."""

from __future__ import annotations

import json

import httpx
import yaml

from tests.conftest import fake_engine_argv, gateway_argv, server, wait_for


def test_access_log_lines_name_the_adapter(tmp_path):
    log = tmp_path / "access.log"
    cfg = {"models": {"m1": {"source": "external", "adapters": {"support": {"source": "/adapters/support"}}}},
           "model_cache_dir": str(tmp_path),
           "gateway": {"api_keys_env": None, "admin_keys_env": None, "access_log": {"path": str(log)}}}
    (tmp_path / "owc.yaml").write_text(yaml.safe_dump(cfg))
    with server(fake_engine_argv("m1")) as e, server(gateway_argv(f"m1={e.url}", config=str(tmp_path / "owc.yaml"))) as gw:
        for model, rid in (("support", "log-adapter"), ("m1", "log-base")):
            r = httpx.post(gw.url + "/v1/chat/completions", headers={"x-request-id": rid}, timeout=30, json={
                "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True})
            assert r.status_code == 200, r.text

        def rows():
            got = {}
            for line in log.read_text().splitlines() if log.exists() else ():
                row = json.loads(line)
                got[row.get("request_id")] = row
            return got if {"log-adapter", "log-base"} <= got.keys() else None

        got = wait_for(rows, 10, "both access-log lines")
        assert got["log-adapter"]["model"] == "m1" and got["log-adapter"]["adapter"] == "support"
        assert got["log-adapter"]["completion_tokens"] == 2
        assert got["log-base"]["model"] == "m1" and got["log-base"]["adapter"] is None
