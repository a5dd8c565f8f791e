"""API keys: a mapping key -> tenant, from a YAML/JSON file and/or an environment variable.

With no keys configured every request belongs to tenant ``anonymous`` (loopback demo);
with keys, every route except /health and /ready needs ``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from cluster.gateway.errors import OpenAIError

ANONYMOUS = "anonymous"


class KeyStore:
    def __init__(self, keys: Mapping[str, str]):
        for key, tenant in keys.items():
            if not key or not isinstance(key, str) or not isinstance(tenant, str) or not tenant:
                raise ValueError("API keys file: every entry must map a non-empty key to a tenant name")
        self._keys = dict(keys)

    @classmethod
    def load(cls, *, file: str | None, env_var: str | None, environ: Mapping[str, str] | None = None) -> KeyStore:
        keys: dict[str, str] = {}
        if file:
            data = yaml.safe_load(Path(file).expanduser().read_text()) or {}
            if isinstance(data, dict) and "keys" in data and isinstance(data["keys"], dict):
                data = data["keys"]
            if not isinstance(data, dict):
                raise ValueError(f"{file}: expected a mapping of API key -> tenant")
            keys.update({str(k): str(v) for k, v in data.items()})
        env = os.environ if environ is None else environ
        raw = env.get(env_var, "") if env_var else ""
        for item in filter(None, (p.strip() for p in raw.split(","))):
            key, sep, tenant = item.partition("=")
            if not sep:
                raise ValueError(f"{env_var}: expected key=tenant pairs separated by commas")
            keys[key.strip()] = tenant.strip()
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def tenant_for(self, authorization: str | None) -> str:
        """Tenant of the request, or an OpenAI 401."""
        if not self._keys:
            return ANONYMOUS
        if not authorization:
            raise OpenAIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise OpenAIError(401, "malformed Authorization header: expected 'Bearer <key>'", code="invalid_api_key")
        token = token.strip()
        for key, tenant in self._keys.items():
            if hmac.compare_digest(key.encode(), token.encode()):
                return tenant
        raise OpenAIError(401, "invalid API key", code="invalid_api_key")
