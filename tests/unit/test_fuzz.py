"""Fuzzing the gateway with schemathesis, driven by OpenAI's own OpenAPI description of
`POST /chat/completions` and `POST /completions` (tests/specs/, vendored): every generated
request body goes through the gateway process (fake engine behind it, so valid cases reach
routing and an engine) with `model` pinned to the served name and the parameters owc
documents as unsupported dropped. No response may be a 5xx, and none may take over 10 s.

`make fuzz` runs more cases (OWC_FUZZ_EXAMPLES per operation)."""

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

SPEC = Path(__file__).resolve().parents[1] / "specs" / "openai-openapi-chat-completions.json"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "specs" / SPEC.name
EXAMPLES = int(os.environ.get("OWC_FUZZ_EXAMPLES", "500"))  # per operation: >= 1,000 cases in CI
MODEL = "fake-model"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "owc.yaml"
    path.write_text(yaml.safe_dump({"models": {MODEL: {"source": "external"}},
                                    "gateway": {"api_keys_env": None, "access_log": {"enabled": False}}}))
    with server(fake_engine_argv(MODEL, ttft_ms=1, itl_ms=0)) as engine, \
            server(gateway_argv(f"{MODEL}={engine.url}", config=str(path))) as gw:
        yield gw


def test_the_vendored_spec_is_the_shared_one():
    if not SHARED.exists():
        pytest.skip("../shared/specs not next to this checkout")
    assert json.loads(SPEC.read_text()) == json.loads(SHARED.read_text())


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_no_generated_request_makes_the_gateway_fail(gateway, path):
    strategy = schemathesis.openapi.from_path(str(SPEC))[path]["POST"].as_strategy()
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
        try:
            r = client.post(path, json=body)
        except httpx.TimeoutException:
            alive = gateway.alive()
            try:
                again = client.post(path, json=body).status_code
            except httpx.HTTPError as e:
                again = repr(e)
            failures.append((0, f"timeout over 10 s (gateway alive {alive}, again: {again})", json.dumps(body)[:200]))
            return
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code >= 500:
            failures.append((r.status_code, r.text[:300], json.dumps(body)[:300]))

    try:
        one()
    finally:
        client.close()
    assert failures == []
    cases = sum(statuses.values())
    assert cases >= EXAMPLES * 0.9, statuses
    assert statuses.get(200, 0) > 0, statuses  # some cases reached the engine
    print(f"{path}: {cases} cases, statuses {dict(sorted(statuses.items()))}")
