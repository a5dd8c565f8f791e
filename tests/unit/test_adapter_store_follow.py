"""Run-time adapters added or removed through another gateway process (`owc serve` runs two
sharing the port) are served or refused by this one at once, not only after its next read of
the store (review 10: for up to a second after `owc adapter add` returned, about half of the
requests naming the new adapter were a 404 model_not_found, and the docs' remove example,
"the next request is a 404", held only on the process that made the call)."""

from __future__ import annotations

import json

import httpx
import yaml

from cluster.adapters.store import FILE_NAME
from tests.conftest import fake_engine_argv, gateway_argv, server


def test_another_processs_addition_and_removal_apply_to_the_next_request(tmp_path):
    cfg = {"models": {"m1": {"source": "external", "lora": {"enabled": True}}}, "model_cache_dir": str(tmp_path),
           "gateway": {"api_keys_env": None, "admin_keys_env": None}}
    (tmp_path / "owc.yaml").write_text(yaml.safe_dump(cfg))
    store = tmp_path / FILE_NAME

    def record(**adapters: str) -> None:  # what another gateway process's admin call writes
        tmp = store.with_suffix(".tmp")
        tmp.write_text(json.dumps({"models": {"m1": {n: {"source": s} for n, s in adapters.items()}} if adapters else {}}))
        tmp.replace(store)

    def chat(url: str, model: str) -> httpx.Response:
        return httpx.post(url + "/v1/chat/completions", timeout=30, json={
            "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})

    with server(fake_engine_argv("m1")) as e, server(gateway_argv(f"m1={e.url}", config=str(tmp_path / "owc.yaml"))) as gw:
        for i in range(3):
            record(late=f"/adapters/late-{i}")
            r = chat(gw.url, "late")
            assert r.status_code == 200 and r.json()["model"] == "late", r.text
            record()
            r = chat(gw.url, "late")
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
        assert chat(gw.url, "m1").status_code == 200
