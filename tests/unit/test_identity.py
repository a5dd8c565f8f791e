"""Identity: hashed keys files (and plaintext ones, with a warning), `owc keys create`, JWTs
from an upstream API gateway (valid, expired, wrong issuer or audience, unknown key id,
missing claim) and a tenant header trusted only from trusted proxy addresses."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from cluster.config.schema import GatewayConfig
from cluster.gateway.auth.authenticator import ANONYMOUS, Authenticator, KeyStore, parse_networks
from cluster.gateway.errors import OpenAIError
from cluster.gateway.auth.jwt import JwtVerifier
from cluster.gateway.auth.keys import KeyTable, hash_key, is_hash, read_key_file
from tests.conftest import fake_engine_argv, gateway_argv, metric, server

ISS, AUD = "https://idp.example", "owc"


@pytest.fixture(scope="module")
def signer():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return key, {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}


def token(key, *, kid="k1", iss=ISS, aud=AUD, exp_in=300, **claims) -> str:
    payload = {"iss": iss, "aud": aud, "exp": int(time.time()) + exp_in, "tenant": "team-jwt", **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm="RS256", headers={"kid": kid})


def bearer(t: str) -> dict[bytes, bytes]:
    return {b"authorization": f"Bearer {t}".encode()}


# --- keys ---------------------------------------------------------------------------------

def test_hashed_keys_file_is_a_dict_lookup(tmp_path):
    f = tmp_path / "keys.yaml"
    f.write_text(yaml.safe_dump({hash_key("sk-a"): "a", hash_key("sk-b"): "b"}))
    table = KeyTable.load(files=[str(f)], env_var=None)
    assert table.lookup("sk-a") == "a" and table.lookup("sk-b") == "b" and table.lookup("sk-c") is None
    assert "sk-a" not in f.read_text()


def test_plaintext_keys_file_still_loads_with_a_warning(tmp_path, caplog):
    f = tmp_path / "keys.yaml"
    f.write_text(yaml.safe_dump({"sk-plain": "p"}))
    with caplog.at_level(logging.WARNING):
        table = read_key_file(f)
    assert list(table.values()) == ["p"] and all(is_hash(h) for h in table)
    assert "plaintext" in caplog.text


def test_owc_keys_create_prints_once_and_writes_only_the_hash(tmp_path):
    f = tmp_path / "keys.yaml"
    p = subprocess.run([sys.executable, "-m", "cluster.cli", "keys", "create", "--tenant", "team-a", "--file", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    key = p.stdout.strip()
    assert key.startswith("owc-") and len(key) > 40
    assert key not in f.read_text() and KeyTable.load(files=[str(f)], env_var=None).lookup(key) == "team-a"
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    p = subprocess.run([sys.executable, "-m", "cluster.cli", "keys", "create", "--admin", "ops", "--file", str(f)],
                       capture_output=True, text=True, timeout=60)
    admin = p.stdout.strip()
    assert KeyTable.load(files=[str(f)], env_var=None).lookup(admin) == "ops"
    assert KeyTable.load(files=[str(f)], env_var=None).lookup(key) == "team-a"  # kept


def test_owc_keys_list_and_revoke(tmp_path):
    """A platform team lists who holds keys (names and the start of each hash, never a key) and
    revokes one key by that start, or every key of a tenant; a plaintext entry too."""
    from typer.testing import CliRunner

    from cluster.cli import app

    f = tmp_path / "keys.yaml"
    keys = [CliRunner().invoke(app, ["keys", "create", "--tenant", t, "--file", str(f)]).output.strip().splitlines()[-1]
            for t in ("team-a", "team-a", "team-b")]
    f.write_text(f.read_text() + "owc-plain-key-of-c: team-c\n")
    r = CliRunner().invoke(app, ["keys", "list", "--file", str(f)])
    rows = [line.split("\t") for line in r.output.splitlines()]
    assert r.exit_code == 0 and [n for n, _ in rows] == ["team-a", "team-a", "team-b", "team-c"]
    assert all(h.startswith("sha256:") and h.endswith("…") for _, h in rows) and not any(k in r.output for k in keys)
    first = hash_key(keys[0])
    r = CliRunner().invoke(app, ["keys", "revoke", first[7:19], "--file", str(f)])  # the start, without sha256:
    assert r.exit_code == 0, r.output
    table = KeyTable.load(files=[str(f)], env_var=None)
    assert (table.lookup(keys[0]), table.lookup(keys[1]), table.lookup(keys[2])) == (None, "team-a", "team-b")
    r = CliRunner().invoke(app, ["keys", "revoke", "--tenant", "team-c", "--file", str(f)])  # a plaintext entry
    assert r.exit_code == 0 and KeyTable.load(files=[str(f)], env_var=None).lookup("owc-plain-key-of-c") is None
    r = CliRunner().invoke(app, ["keys", "revoke", "sha256:", "--file", str(f)])  # the start of every hash
    assert r.exit_code == 1 and "give more of it" in r.output
    r = CliRunner().invoke(app, ["keys", "revoke", "--tenant", "nobody", "--file", str(f)])
    assert r.exit_code == 1 and "no key of 'nobody'" in r.output
    assert oct(f.stat().st_mode & 0o777) == "0o600"


def test_env_keys_may_be_hashes():
    store = KeyStore.load(file=None, env_var="K", environ={"K": f"sk-x=x,{hash_key('sk-y')}=y"})
    assert store.tenant_for("Bearer sk-x") == "x" and store.tenant_for("Bearer sk-y") == "y"


# --- JWT ------------------------------------------------------------------------------------

def _verifier(jwks) -> JwtVerifier:
    return JwtVerifier(issuer=ISS, audience=AUD, tenant_claim="tenant", algorithms=["RS256"], jwks=jwks)


@pytest.mark.parametrize("kw, tenant_or_error", [
    ({}, "team-jwt"),
    ({"exp_in": -3600}, "token expired"),
    ({"iss": "https://evil.example"}, "wrong issuer"),
    ({"aud": "someone-else"}, "wrong audience"),
    ({"kid": "k9"}, "unknown signing key id 'k9'"),
    ({"tenant": None}, "claim 'tenant' naming the tenant is missing"),
    ({"tenant": 7}, "claim 'tenant' naming the tenant is missing"),
])
def test_jwt_cases(signer, kw, tenant_or_error):
    key, jwks = signer
    auth = Authenticator(keys=KeyStore({}), jwt=_verifier(jwks))
    if tenant_or_error == "team-jwt":
        p = auth.principal(bearer(token(key, **kw)), "10.1.2.3")
        assert (p.name, p.via) == ("team-jwt", "jwt")
    else:
        with pytest.raises(OpenAIError) as e:
            auth.principal(bearer(token(key, **kw)), "10.1.2.3")
        assert e.value.status == 401 and tenant_or_error in str(e.value)


def test_a_token_signed_by_another_key_is_refused(signer):
    _, jwks = signer
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(OpenAIError) as e:
        Authenticator(keys=KeyStore({}), jwt=_verifier(jwks)).principal(bearer(token(other)), None)
    assert e.value.status == 401


def test_a_token_whose_alg_is_not_its_keys_is_refused_not_a_500(signer):
    """An ES256 header naming an RSA key's kid: PyJWT would raise TypeError on the raw key."""
    from cryptography.hazmat.primitives.asymmetric import ec

    _, jwks = signer
    auth = Authenticator(keys=KeyStore({}), jwt=JwtVerifier(issuer=ISS, audience=AUD, tenant_claim="tenant",
                                                             algorithms=["RS256", "ES256"], jwks=jwks))
    forged = jwt.encode({"iss": ISS, "aud": AUD, "exp": int(time.time()) + 60, "tenant": "x"},
                        ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": "k1"})
    with pytest.raises(OpenAIError) as e:
        auth.principal(bearer(forged), None)
    assert e.value.status == 401


def test_jwt_config_refuses_symmetric_algorithms():
    with pytest.raises(ValueError):
        GatewayConfig(jwt={"jwks_file": "x", "issuer": ISS, "audience": AUD, "algorithms": ["HS256"]})


# --- trusted header -------------------------------------------------------------------------

@pytest.mark.parametrize("client, proxies, expected", [
    ("10.0.0.5", ["10.0.0.0/8"], ("team-h", "header")),
    ("192.168.1.9", ["10.0.0.0/8"], "401"),  # untrusted address: the header is ignored
    (None, ["10.0.0.0/8"], "401"),
    ("10.0.0.5", [], "401"),
])
def test_tenant_header_only_from_trusted_proxies(client, proxies, expected):
    auth = Authenticator(keys=KeyStore({"sk-a": "a"}), tenant_header="X-Owc-Tenant",
                         trusted_proxies=parse_networks(proxies))
    headers = {b"x-owc-tenant": b"team-h"}
    if expected == "401":
        with pytest.raises(OpenAIError) as e:
            auth.principal(headers, client)
        assert e.value.status == 401
        # ...while the key still works from there
        assert auth.principal({**headers, b"authorization": b"Bearer sk-a"}, client).name == "a"
    else:
        p = auth.principal(headers, client)
        assert (p.name, p.via) == expected


def test_no_credentials_configured_is_the_anonymous_demo():
    auth = Authenticator(keys=KeyStore({}))
    assert not auth.enabled
    assert auth.principal({}, None).name == ANONYMOUS
    assert auth.principal({b"authorization": b"Bearer whatever"}, None).name == ANONYMOUS


def test_jwt_and_trusted_header_through_the_gateway(tmp_path, signer):
    key, jwks = signer
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    (tmp_path / "owc.yaml").write_text(yaml.safe_dump({
        "models": {"m": {"source": "external"}},
        "gateway": {"api_keys_env": None, "jwt": {"jwks_file": str(tmp_path / "jwks.json"), "issuer": ISS, "audience": AUD},
                    "tenant_header": "X-Owc-Tenant", "trusted_proxies": ["127.0.0.1/32"]},
    }))
    body = {"model": "m", "prompt": "x", "max_tokens": 2}
    with server(fake_engine_argv("m")) as e, server(gateway_argv(f"m={e.url}", config=str(tmp_path / "owc.yaml"))) as gw:
        assert httpx.post(gw.url + "/v1/completions", json=body,
                          headers={"Authorization": f"Bearer {token(key)}"}).status_code == 200
        r = httpx.post(gw.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {token(key, exp_in=-600)}"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
        assert httpx.post(gw.url + "/v1/completions", json=body, headers={"X-Owc-Tenant": "team-h"}).status_code == 200
        assert httpx.post(gw.url + "/v1/completions", json=body).status_code == 401
        assert metric(gw.metrics_url, "owc_requests_total", tenant="team-jwt", code="200") == 1
        assert metric(gw.metrics_url, "owc_requests_total", tenant="team-h", code="200") == 1


async def test_jwks_from_a_url_is_read_off_the_request_path(signer):
    """The JWKS URL variant: keys fetched by the background refresher, then tokens verify."""
    from aiohttp import web

    key, jwks = signer
    app = web.Application()
    app.router.add_get("/jwks", lambda _: web.json_response(jwks))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        v = JwtVerifier(issuer=ISS, audience=AUD, tenant_claim="tenant", algorithms=["RS256"],
                        jwks_url=f"http://127.0.0.1:{port}/jwks")
        with pytest.raises(OpenAIError):  # nothing fetched yet: no key is trusted
            v.tenant(token(key))
        await v.refresh()
        assert v.tenant(token(key)) == "team-jwt"
    finally:
        await runner.cleanup()
