"""Identity from an upstream API gateway's JWT: `Authorization: Bearer <JWT>` verified
against a JWKS (a file, or a URL re-read in the background, never on the request path),
with its issuer, audience and expiry checked; a configured claim names the tenant."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import jwt
from jwt import PyJWKSet

from cluster.gateway.errors import OpenAIError
from cluster.periodic import Periodic

log = logging.getLogger(__name__)


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts starting with a JSON header (`eyJ`): an API key never is."""
    return token.startswith("eyJ") and token.count(".") == 2


class JwtVerifier:
    def __init__(self, *, issuer: str, audience: str, tenant_claim: str, algorithms: list[str],
                 jwks: dict[str, Any] | None = None, jwks_url: str | None = None, leeway_s: float = 30.0,
                 refresh_s: float = 300.0):
        self._issuer = issuer
        self._audience = audience
        self._claim = tenant_claim
        self._algorithms = list(algorithms)
        self._leeway_s = leeway_s
        self._url = jwks_url
        self._keys: dict[str, Any] = {}
        # A failed refresh keeps the last good keys; the refresher never dies.
        self._loop = Periodic(self.refresh, period_s=refresh_s, what=f"JWKS refresh from {jwks_url}", log=log)
        if jwks is not None:
            self.set_jwks(jwks)

    @classmethod
    def from_config(cls, cfg: Any) -> JwtVerifier:
        jwks = json.loads(Path(cfg.jwks_file).expanduser().read_text()) if cfg.jwks_file else None
        return cls(issuer=cfg.issuer, audience=cfg.audience, tenant_claim=cfg.tenant_claim,
                   algorithms=list(cfg.algorithms), jwks=jwks, jwks_url=cfg.jwks_url, leeway_s=cfg.leeway_s,
                   refresh_s=cfg.jwks_refresh_s)

    def set_jwks(self, jwks: Any) -> None:
        if not isinstance(jwks, dict):
            raise ValueError("a JWKS is a JSON object with a `keys` list")
        keys = {k.key_id: k for k in PyJWKSet.from_dict(jwks).keys if k.key_id and (k.public_key_use in (None, "sig"))}
        if not keys:
            raise ValueError("JWKS holds no key with a key id (kid)")
        self._keys = keys

    async def refresh(self) -> None:
        if self._url is None:
            return
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.get(self._url)
            resp.raise_for_status()
            self.set_jwks(resp.json())

    async def start(self) -> None:
        if self._url is not None:
            self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    def tenant(self, token: str) -> str:
        """The tenant a valid token names, or an OpenAI 401 that says what is wrong."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise _invalid("malformed token") from None
        key = self._keys.get(kid) if kid else None
        if key is None:
            raise _invalid(f"unknown signing key id {kid!r}" if kid else "token has no key id (kid)")
        try:
            # The PyJWK itself, not its raw key: PyJWT then requires the token's `alg` to be the
            # key's own algorithm (no RS/ES confusion between a token header and the key).
            claims = jwt.decode(token, key=key, algorithms=self._algorithms, audience=self._audience,
                                issuer=self._issuer, leeway=self._leeway_s,
                                options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise _invalid("token expired") from None
        except jwt.InvalidAudienceError:
            raise _invalid("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise _invalid("wrong issuer") from None
        except (jwt.PyJWTError, TypeError, ValueError) as e:  # a key/algorithm mismatch raises TypeError
            raise _invalid(str(e) or type(e).__name__) from None
        tenant = claims.get(self._claim)
        if not isinstance(tenant, str) or not tenant:
            raise _invalid(f"claim {self._claim!r} naming the tenant is missing")
        return tenant


def _invalid(why: str) -> OpenAIError:
    return OpenAIError(401, f"invalid token: {why}", code="invalid_token")
