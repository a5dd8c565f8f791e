"""Who is calling, and may they: tenant API keys, admin keys, JWTs from an upstream API
gateway, or a tenant header set by a trusted proxy -> a Principal; then per-tenant
allow-lists of models and adapters.

With no tenant credential configured every tenant request belongs to ``anonymous``
(loopback demo; binding beyond loopback is then refused). Admin routes accept admin keys
only, and tenant routes tenant credentials only (403 for the other kind). 401: missing,
malformed or unknown credential."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from cluster.config.schema import GatewayConfig, TenantConfig
from cluster.gateway.auth.throttle import FailedAuthLimiter, client_address, is_trusted
from cluster.gateway.errors import OpenAIError
from cluster.gateway.auth.jwt import JwtVerifier, looks_like_jwt
from cluster.gateway.auth.key_reload import KeyReloader, Watched, jwks_reload, key_table_reload
from cluster.gateway.auth.keys import KeyTable, hashed

ANONYMOUS = "anonymous"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Principal:
    name: str  # the tenant, or the admin key's name
    admin: bool = False
    via: str = "key"  # key | jwt | header | anonymous


class KeyStore:
    """Tenant API keys (`hash -> tenant`); plaintext keys given here are hashed at once."""

    def __init__(self, keys: Mapping[str, str] | KeyTable):
        self._table = keys if isinstance(keys, KeyTable) else KeyTable(hashed(keys))

    @classmethod
    def load(cls, *, file: str | None, env_var: str | None, environ: Mapping[str, str] | None = None) -> KeyStore:
        return cls(KeyTable.load(files=[file], env_var=env_var, environ=environ))

    @property
    def enabled(self) -> bool:
        return bool(self._table)

    @property
    def table(self) -> KeyTable:
        return self._table

    def lookup(self, key: str) -> str | None:
        return self._table.lookup(key)

    def tenant_for(self, authorization: str | None) -> str:
        """Tenant of a request that carries only an Authorization header, or an OpenAI 401."""
        if not self.enabled:
            return ANONYMOUS
        tenant = self._table.lookup(bearer_token(authorization))
        if tenant is None:
            raise OpenAIError(401, "invalid API key", code="invalid_api_key")
        return tenant


def _token(authorization: str | None) -> str | None:
    """The token of `Bearer <token>`; None when the header is missing or not of that form."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def bearer_token(authorization: str | None) -> str:
    """The bearer token, or the OpenAI 401 that says what is wrong with the header."""
    token = _token(authorization)
    if token is not None:
        return token
    if not authorization:
        raise OpenAIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
    raise OpenAIError(401, "malformed Authorization header: expected 'Bearer <key>'", code="invalid_api_key")


def parse_networks(items: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(i, strict=False) for i in items]


# Observes each failed authentication: (the 401's code, whether the address was throttled).
FailureHook = Callable[[str, bool], None]


class Authenticator:
    def __init__(self, *, keys: KeyStore, admin_keys: KeyTable | None = None, jwt: JwtVerifier | None = None,
                 tenant_header: str | None = None, trusted_proxies: Sequence[Network] = (),
                 throttle: FailedAuthLimiter | None = None, reloader: KeyReloader | None = None):
        self._keys = keys
        self._admin = admin_keys if admin_keys is not None else KeyTable({})
        self.jwt = jwt
        self._header = tenant_header.lower().encode() if tenant_header else None
        self._trusted = list(trusted_proxies)
        self._throttle = throttle
        self.reloader = reloader
        self.on_failure: FailureHook = lambda code, throttled: None

    @classmethod
    def from_config(cls, gw: GatewayConfig, *, environ: Mapping[str, str] | None = None) -> Authenticator:
        keys = KeyStore.load(file=gw.api_keys_file, env_var=gw.api_keys_env, environ=environ)
        admin = KeyTable.load(files=[gw.admin_keys_file], env_var=gw.admin_keys_env, environ=environ)
        jwt = JwtVerifier.from_config(gw.jwt) if gw.jwt else None
        watched = [
            Watched("api_keys", [f for f in [gw.api_keys_file] if f],
                    key_table_reload(keys.table, files=[gw.api_keys_file], env_var=gw.api_keys_env)),
            Watched("admin_keys", [f for f in [gw.admin_keys_file] if f],
                    key_table_reload(admin, files=[gw.admin_keys_file], env_var=gw.admin_keys_env)),
        ]
        if jwt is not None and gw.jwt.jwks_file:
            watched.append(Watched("jwks", [gw.jwt.jwks_file], jwks_reload(jwt, gw.jwt.jwks_file)))
        return cls(
            keys=keys, admin_keys=admin, jwt=jwt,
            tenant_header=gw.tenant_header, trusted_proxies=parse_networks(gw.trusted_proxies),
            throttle=FailedAuthLimiter(per_minute=gw.limits.auth_failures_per_minute, burst=gw.limits.auth_failures_burst),
            reloader=KeyReloader(watched, period_s=gw.keys_reload_s),
        )

    @property
    def api_keys(self) -> bool:
        """Tenant API keys are configured (a client sends one as `Authorization: Bearer`)."""
        return self._keys.enabled

    @property
    def enabled(self) -> bool:
        """Some tenant credential is configured (what binding beyond loopback needs)."""
        return self._keys.enabled or self.jwt is not None or self._header is not None

    def client_address(self, headers: Mapping[bytes, bytes], client: str | None) -> str | None:
        """The real client's address (behind trusted proxies, from X-Forwarded-For)."""
        return client_address(headers, client, self._trusted)

    def principal(self, headers: Mapping[bytes, bytes], client: str | None) -> Principal:
        """Who sent the request (ASGI headers, lower-case names); raises the OpenAI 401, or
        a 429 when the client's address has failed too often (cluster.gateway.auth.throttle).

        Order: the trusted header (from a trusted proxy only), then the bearer token as an
        admin key, a tenant key, a JWT. With no tenant credential configured, anything
        but an admin key is ``anonymous``."""
        try:
            return self._identify(headers, client)
        except OpenAIError as err:
            if err.status != 401:
                raise
            wait = self._throttle.failed(self.client_address(headers, client)) if self._throttle else 0.0
            self.on_failure(err.code or "invalid_api_key", wait > 0)
            if wait > 0:
                raise OpenAIError(
                    429, "too many failed authentications from this address; retry later",
                    type="rate_limit_error", code="too_many_auth_failures",
                    headers={"Retry-After": FailedAuthLimiter.retry_after(wait)},
                ) from None
            raise

    def _identify(self, headers: Mapping[bytes, bytes], client: str | None) -> Principal:
        if self._header is not None and is_trusted(client, self._trusted):
            tenant = headers.get(self._header, b"").decode("latin-1").strip()
            if tenant:
                return Principal(tenant, via="header")
        raw = headers.get(b"authorization")
        authorization = raw.decode("latin-1") if raw is not None else None
        token = _token(authorization)
        if token and (name := self._admin.lookup(token)) is not None:
            return Principal(name, admin=True)
        if not self.enabled:
            return Principal(ANONYMOUS, via="anonymous")
        token = bearer_token(authorization)  # the 401 that says why
        if (tenant := self._keys.lookup(token)) is not None:
            return Principal(tenant)
        if self.jwt is not None and looks_like_jwt(token):
            return Principal(self.jwt.tenant(token), via="jwt")
        raise OpenAIError(401, "invalid API key", code="invalid_api_key")

    def tenant(self, headers: Mapping[bytes, bytes], client: str | None) -> str:
        """The tenant of a tenant route's request; an admin key is refused here (403)."""
        p = self.principal(headers, client)
        if p.admin:
            raise OpenAIError(403, "admin keys are for the admin API only; use a tenant key", code="permission_denied")
        return p.name

    @property
    def admin_configured(self) -> bool:
        """Whether any admin key is configured (the admin API is served at all)."""
        return bool(self._admin)

    def admin(self, headers: Mapping[bytes, bytes], client: str | None) -> Principal:
        """The admin behind an admin route's request; tenant credentials are refused (403)."""
        if not self._admin:
            raise OpenAIError(401, "no admin keys are configured (gateway.admin_keys_file or OWC_ADMIN_KEYS)",
                              code="invalid_api_key")
        p = self.principal(headers, client)
        if not p.admin:
            if p.via == "anonymous":
                raise OpenAIError(401, "missing admin key: send 'Authorization: Bearer <admin key>'",
                                  code="missing_api_key")
            raise OpenAIError(403, "this route needs an admin key", code="permission_denied")
        return p


def allowed(tenants: Mapping[str, TenantConfig], tenant: str, model: str, adapter: str | None = None) -> bool:
    """Whether a tenant may use a served model (and adapter): no allow-list means all."""
    cfg = tenants.get(tenant)
    if cfg is None:
        return True
    if cfg.models is not None and model not in cfg.models:
        return False
    return adapter is None or cfg.adapters is None or adapter in cfg.adapters
