"""Fuzzing `POST /v1/responses` with schemathesis from OpenAI's own description of it
(tests/specs/openai-openapi-responses.json, vendored from ../shared/specs): every generated
body goes through the gateway to the fake engine, with `model` pinned and the parameters
owc documents as unsupported dropped. No 5xx, none over 10 s. As tests/unit/test_fuzz.py
does for chat and completions (OWC_FUZZ_EXAMPLES cases)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings

from cluster.gateway.validation import UNSUPPORTED
from tests.conftest import fake_engine_argv, gateway_argv, server

SPEC = Path(__file__).resolve().parents[1] / "specs" / "openai-openapi-responses.json"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "specs" / SPEC.name
EXAMPLES = int(os.environ.get("OWC_FUZZ_EXAMPLES", "300"))
MODEL = "fake-model"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    path = tmp_path_factory.mktemp("rfuzz") / "owc.yaml"
    path.write_text(yaml.safe_dump({"models": {MODEL: {"source": "external"}},
                                    "gateway": {"api_keys_env": None, "access_log": {"enabled": False}}}))
    with server(fake_engine_argv(MODEL, ttft_ms=1, itl_ms=0)) as engine, \
            server(gateway_argv(f"{MODEL}={engine.url}", config=str(path))) as gw:
        yield gw


def test_the_vendored_spec_is_the_shared_one():
    if not SHARED.exists():
        pytest.skip("../shared/specs not next to this checkout")
    assert json.loads(SPEC.read_text()) == json.loads(SHARED.read_text())


def test_no_generated_responses_request_makes_the_gateway_fail(gateway):
    strategy = schemathesis.openapi.from_path(str(SPEC))["/responses"]["POST"].as_strategy()
    statuses: dict[int, int] = {}
    failures: list[tuple[int, str, str]] = []
    client = httpx.Client(base_url=gateway.url + "/v1", timeout=10)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def one(case):
        body = case.body
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k not in UNSUPPORTED}
            body["model"] = MODEL
            body.setdefault("input", "x")
            if isinstance(body.get("max_output_tokens"), int):
                body["max_output_tokens"] = min(body["max_output_tokens"], 64)
        try:
            r = client.post("/responses", json=body)
        except httpx.TimeoutException:
            failures.append((0, "timeout over 10 s", json.dumps(body)[:200]))
            return
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code >= 500:
            failures.append((r.status_code, r.text[:300], json.dumps(body)[:300]))

    try:
        one()
    finally:
        client.close()
    assert failures == []
    assert sum(statuses.values()) >= EXAMPLES * 0.9, statuses
    assert statuses.get(200, 0) > 0, statuses
    print(f"/responses: {sum(statuses.values())} cases, statuses {dict(sorted(statuses.items()))}")
