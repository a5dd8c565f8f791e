"""Fuzzing the Files and Batches routes with schemathesis, driven by OpenAI's own OpenAPI
description of `/files` and `/batches` (tests/specs/openai-openapi-files-batches.json, vendored;
tests/unit/test_fuzz.py keeps it equal to the shared copy): every operation's generated
requests (multipart uploads, JSON bodies, path ids, query parameters) go through one gateway
process. No response may be a 5xx or take over 10 s, and every error is OpenAI-shaped.
`make fuzz` runs more cases (OWC_FUZZ_EXAMPLES per operation)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings

from tests.conftest import fake_engine_argv, gateway_argv, server

SPEC = Path(__file__).resolve().parents[1] / "specs" / "openai-openapi-files-batches.json"
OPERATIONS = [("/files", "POST"), ("/files", "GET"), ("/files/{file_id}", "GET"), ("/files/{file_id}", "DELETE"),
              ("/files/{file_id}/content", "GET"), ("/batches", "POST"), ("/batches", "GET"),
              ("/batches/{batch_id}", "GET"), ("/batches/{batch_id}/cancel", "POST")]
EXAMPLES = 25  # per operation in CI (9 operations)
MODEL = "fake-model"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzzbatch")
    (d / "owc.yaml").write_text(yaml.safe_dump({
        "models": {MODEL: {"source": "external"}},
        "gateway": {"api_keys_env": None, "access_log": {"enabled": False}},
        "batch": {"store_dir": str(d / "store"), "max_file_bytes": 1 << 20}}))
    with server(fake_engine_argv(MODEL, ttft_ms=1, itl_ms=0)) as engine, \
            server(gateway_argv(f"{MODEL}={engine.url}", config=str(d / "owc.yaml"))) as gw:
        yield gw


def test_the_spec_covers_every_batch_route():
    spec = schemathesis.openapi.from_path(str(SPEC))
    assert sorted((p, m.upper()) for p in spec for m in spec[p]) == sorted(OPERATIONS)


@pytest.mark.parametrize("path,method", OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_no_generated_request_makes_the_gateway_fail(gateway, path, method):
    examples = int(os.environ.get("OWC_FUZZ_EXAMPLES", EXAMPLES))
    strategy = schemathesis.openapi.from_path(str(SPEC))[path][method].as_strategy()
    statuses: dict[int, int] = {}
    failures: list[tuple[object, str, str]] = []
    session = requests.Session()

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def one(case):
        kwargs = case.as_transport_kwargs(base_url=gateway.url + "/v1")
        kwargs["headers"].pop("Authorization", None)  # the spec's API key: the gateway runs keyless on loopback
        try:
            r = session.request(**kwargs, timeout=10)
        except requests.Timeout:
            failures.append(("timeout", f"over 10 s (gateway alive {gateway.alive()})", kwargs["url"]))
            return
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code >= 500:
            failures.append((r.status_code, r.text[:300], f"{kwargs['url']} {str(kwargs.get('json'))[:200]}"))
        elif r.status_code >= 400 and set(r.json().get("error", {})) != {"message", "type", "param", "code"}:
            failures.append((r.status_code, "not an OpenAI error: " + r.text[:300], kwargs["url"]))

    try:
        one()
    finally:
        session.close()
    assert failures == []
    assert sum(statuses.values()) >= examples * 0.9, statuses
    print(f"{method} {path}: {sum(statuses.values())} cases, statuses {dict(sorted(statuses.items()))}")
