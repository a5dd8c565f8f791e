"""The engine's door (cluster/engine/guard.py), as an ASGI app would see it: every path but
/health and /metrics needs the engine key; the key reaches the engine through its
environment, never its command line; engine_kwargs cannot switch the guard off."""

from __future__ import annotations

import asyncio

import pytest

from cluster.config.schema import ModelConfig
from cluster.engine.args import RESERVED_KWARGS, check_engine_kwargs
from cluster.engine.guard import ENGINE_KEY_ENV, EngineGuard, identity_env
from cluster.engine.launcher import vllm_launcher

KEY = "k" * 43


async def _app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _status(path: str, authorization: bytes | None, kind: str = "http") -> int | str:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    headers = [(b"authorization", authorization)] if authorization is not None else []
    asyncio.run(EngineGuard(_app, key=KEY)({"type": kind, "path": path, "headers": headers}, receive, send))
    return sent[0].get("status", sent[0]["type"])


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/invocations", "/tokenize", "/detokenize",
                                  "/v1/models", "/v1/load_lora_adapter", "/v1/responses", "/pooling", "/"])
@pytest.mark.parametrize("authorization, status", [
    (None, 401), (b"Bearer wrong", 401), (b"Basic " + KEY.encode(), 401), (b"Bearer " + KEY.encode() + b"x", 401),
    (b"Bearer " + KEY.encode(), 200),
])
def test_every_generating_or_informing_path_needs_the_key(path, authorization, status):
    assert _status(path, authorization) == status


@pytest.mark.parametrize("path", ["/health", "/metrics", "/metrics/"])
def test_health_and_metrics_stay_open(path):
    assert _status(path, None) == 200


def test_websockets_are_closed_without_the_key():
    assert _status("/v1/realtime", None, kind="websocket") == "websocket.close"


def test_health_names_the_model_and_version_its_replica_set(monkeypatch):
    """On Kubernetes `owc controller` tells a rollout's stable and candidate replicas apart
    by this (cluster.rollouts.engine_pods); other paths are answered as they were."""
    monkeypatch.setenv(ENGINE_KEY_ENV, KEY)
    for k, v in identity_env("org/model x", "candidate").items():
        monkeypatch.setenv(k, v)

    def headers(path: str) -> dict[bytes, bytes]:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b""}

        scope = {"type": "http", "path": path, "headers": [(b"authorization", b"Bearer " + KEY.encode())]}
        asyncio.run(EngineGuard(_app)(scope, receive, send))
        return dict(sent[0]["headers"])

    assert headers("/health") == {b"x-owc-model": b"org%2Fmodel%20x", b"x-owc-version": b"candidate"}
    assert headers("/v1/models") == {}
    monkeypatch.delenv("OWC_ENGINE_VERSION")
    assert headers("/health") == {}  # an engine owc did not name: nothing claimed


def test_the_guard_refuses_to_start_without_a_key(monkeypatch):
    monkeypatch.delenv(ENGINE_KEY_ENV, raising=False)
    with pytest.raises(RuntimeError, match=ENGINE_KEY_ENV):
        EngineGuard(_app)


def test_the_key_goes_through_the_environment_not_argv(tmp_path):
    cfg = ModelConfig(source=str(tmp_path))
    cmd = vllm_launcher("m", cfg, str(tmp_path), engine_key=KEY)
    assert cmd.env[ENGINE_KEY_ENV] == KEY and all(KEY not in a for a in cmd.argv)
    assert cmd.argv[cmd.argv.index("--middleware") + 1] == "cluster.engine.guard.EngineGuard"
    open_cmd = vllm_launcher("m", cfg, str(tmp_path))  # bare vLLM for benchmarks: no guard
    assert "--middleware" not in open_cmd.argv and ENGINE_KEY_ENV not in open_cmd.env


@pytest.mark.parametrize("name", ["api_key", "middleware", "host", "port"])
def test_the_config_cannot_move_the_engines_door(name):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="set by owc"):
        ModelConfig(source="x", engine_kwargs={name: []})


@pytest.mark.parametrize("name", ["api_key", "middleware"])
def test_engine_kwargs_cannot_replace_the_guard(name):
    assert name in RESERVED_KWARGS
    assert check_engine_kwargs({name: "x"}, None) == [
        f"{name}: the engine's door is owc's (EngineGuard, the engine key); not an engine_kwarg"]
