"""Fuzzing the gateway with schemathesis, driven by OpenAI's own OpenAPI description of
`POST /chat/completions`, `POST /completions` and `POST /responses` (tests/specs/, vendored),
and by vLLM's own request models of Anthropic's `POST /messages` and `/messages/count_tokens`
(no Anthropic spec is vendored), one gateway process for all: every generated
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

from cluster.gateway.admission.validation import UNSUPPORTED
from tests.conftest import fake_engine_argv, gateway_argv, server

SPECS = Path(__file__).resolve().parents[1] / "specs"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "specs"
CHAT_SPEC, RESPONSES_SPEC = "openai-openapi-chat-completions.json", "openai-openapi-responses.json"
# Anthropic's Messages API: vLLM's own request models (tests/unit/test_anthropic_spec.py keeps it).
MESSAGES_SPEC = "vllm-anthropic-messages.json"
# operation -> (its spec, cases in CI): >= 1,000 chat/completions cases, 300 responses cases,
# 300 Messages API cases.
OPERATIONS = {"/chat/completions": (CHAT_SPEC, 500), "/completions": (CHAT_SPEC, 500), "/responses": (RESPONSES_SPEC, 300),
              "/messages": (MESSAGES_SPEC, 200), "/messages/count_tokens": (MESSAGES_SPEC, 100)}
MODEL = "fake-model"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "owc.yaml"
    path.write_text(yaml.safe_dump({"models": {MODEL: {"source": "external"}},
                                    "gateway": {"api_keys_env": None, "access_log": {"enabled": False}}}))
    with server(fake_engine_argv(MODEL, ttft_ms=1, itl_ms=0)) as engine, \
            server(gateway_argv(f"{MODEL}={engine.url}", config=str(path))) as gw:
        yield gw


@pytest.mark.parametrize("name", [CHAT_SPEC, RESPONSES_SPEC, "openai-openapi-files-batches.json"])  # the last: test_fuzz_batch.py's
def test_the_vendored_spec_is_the_shared_one(name):
    if not (SHARED / name).exists():
        pytest.skip("../shared/specs not next to this checkout")
    assert json.loads((SPECS / name).read_text()) == json.loads((SHARED / name).read_text())


def _pinned(body: dict, path: str) -> dict:
    """A generated body with `model` pinned and owc's unsupported parameters dropped (a
    Responses body also gets an input and a small output bound)."""
    if path.startswith("/messages"):  # Anthropic's parameters: no OpenAI ones to drop; a small output bound
        body = {**body, "model": MODEL}
        if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 0:
            body["max_tokens"] = min(body["max_tokens"], 64)
        return body
    body = {k: v for k, v in body.items() if k not in UNSUPPORTED}
    body["model"] = MODEL
    if path == "/responses":
        body.setdefault("input", "x")
        if isinstance(body.get("max_output_tokens"), int):
            body["max_output_tokens"] = min(body["max_output_tokens"], 64)
    return body


@pytest.mark.parametrize("path", list(OPERATIONS))
def test_no_generated_request_makes_the_gateway_fail(gateway, path):
    spec, default_examples = OPERATIONS[path]
    examples = int(os.environ.get("OWC_FUZZ_EXAMPLES", default_examples))
    strategy = schemathesis.openapi.from_path(str(SPECS / spec))[path]["POST"].as_strategy()
    statuses: dict[int, int] = {}
    failures: list[tuple[int, str, str]] = []
    client = httpx.Client(base_url=gateway.url + "/v1", timeout=10)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def one(case):
        body = case.body
        if isinstance(body, dict):
            body = _pinned(body, path)
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
    assert cases >= examples * 0.9, statuses
    assert statuses.get(200, 0) > 0, statuses  # some cases reached the engine
    print(f"{path}: {cases} cases, statuses {dict(sorted(statuses.items()))}")
