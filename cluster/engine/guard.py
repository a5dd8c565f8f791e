"""The engine's door: an ASGI middleware that owc installs in every vLLM server it starts
(vLLM's `--middleware cluster.engine.guard.EngineGuard`). Every path but /health, /metrics
and /metrics/ (read by Serve's health check and by the scrapers: /metrics/ is the same
metrics, filtered by ``name[]``; on Kubernetes a NetworkPolicy limits who reaches the port
at all) needs ``Authorization: Bearer <engine key>``.

vLLM's own `--api-key` is not enough: it guards only /v1, /v2, /inference and /cohere,
while `POST /invocations` generates and `/tokenize` answers without it. The key comes from
the engine process's environment (OWC_ENGINE_KEY), never its command line.

/health also says which model and version the engine serves (``x-owc-model``,
``x-owc-version``, from OWC_ENGINE_MODEL / OWC_ENGINE_VERSION, which the engine replica
sets): on Kubernetes `owc controller` finds one replica of each version for a rollout's
conformance gate by asking the engine pods (cluster.rollouts.engine_pods)."""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import quote

ENGINE_KEY_ENV = "OWC_ENGINE_KEY"
MODEL_ENV, VERSION_ENV = "OWC_ENGINE_MODEL", "OWC_ENGINE_VERSION"
MODEL_HEADER, VERSION_HEADER = "x-owc-model", "x-owc-version"
OPEN_PATHS = frozenset({"/health", "/metrics", "/metrics/"})

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

_DENIED = json.dumps({"error": {
    "message": "this engine answers only the owc gateway: missing or wrong engine credential",
    "type": "authentication_error", "param": None, "code": "invalid_engine_key",
}}).encode()


def authorized(path: str, authorization: bytes | None, expected: bytes) -> bool:
    """Whether a request for ``path`` with this Authorization header may reach the engine."""
    if path in OPEN_PATHS:
        return True
    return authorization is not None and hmac.compare_digest(authorization, expected)


def bearer(key: str) -> bytes:
    return b"Bearer " + key.encode()


def identity_env(model: str, version: str) -> dict[str, str]:
    """The environment that makes an engine's /health say what it serves."""
    return {MODEL_ENV: model, VERSION_ENV: version}


def identity_headers(env: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """/health's headers naming the model (percent-encoded) and version; none when unset."""
    model, version = env.get(MODEL_ENV), env.get(VERSION_ENV)
    if not model or not version:
        return []
    return [(MODEL_HEADER.encode(), quote(model, safe="").encode()), (VERSION_HEADER.encode(), quote(version, safe="").encode())]


class EngineGuard:
    """Refuses to start without a key: an engine owc starts is never open by accident."""

    def __init__(self, app: ASGIApp, *, key: str | None = None):
        key = key if key is not None else os.environ.get(ENGINE_KEY_ENV, "")
        if not key:
            raise RuntimeError(f"{ENGINE_KEY_ENV} is not set: the engine would answer anyone")
        self.app = app
        self._expected = bearer(key)
        self._identity = identity_headers(os.environ)

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            auth = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            if not authorized(scope["path"], auth, self._expected):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(_DENIED)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ]})
                await send({"type": "http.response.body", "body": _DENIED})
                return
            if scope["path"] == "/health" and self._identity:
                send = self._naming(send)
        await self.app(scope, receive, send)

    def _naming(self, send: Callable[[dict], Awaitable[None]]) -> Callable[[dict], Awaitable[None]]:
        async def named(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self._identity]}
            await send(message)
        return named
