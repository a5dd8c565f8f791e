"""Stored responses' ids, minted by the gateway so that any gateway replica can tell which
engine replica holds a response, without shared state.

vLLM makes a Responses request's `request_id` (a body field) the response's id. For a request
whose response will be stored, the gateway sets it, once the replica is chosen, to

    resp_<base64url(payload)><base64url(tag)>

payload = version (1 byte) | mint time (u32, seconds) | nonce (6 bytes) | len(model) (1 byte) |
model | replica id; tag = the first 16 bytes of HMAC-SHA256(key, domain | tenant | payload).
The tenant is authenticated but not written: another tenant's id fails verification exactly
like a forged one. The key is shared by all gateway replicas: `OWC_RESPONSES_ID_KEY` when set,
else derived (HMAC, its own domain) from the engine key `OWC_ENGINE_KEY` they already share;
with neither, a random per-process key (a single gateway process only; logged).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

KEY_ENV = "OWC_RESPONSES_ID_KEY"
PREFIX = "resp_"
VERSION = 1
_DOMAIN = b"owc/response-id/v1\0"
_TAG = 16
_TAG_CHARS = 22  # base64url of 16 bytes, unpadded
_HEAD = struct.Struct(">BI6sB")
MAX_ID_CHARS = 400


@dataclass(frozen=True)
class Owner:
    model: str
    replica_id: str
    minted_s: int


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def derive_key(*, explicit: str | None, engine_key: str | None) -> tuple[bytes, str]:
    """The id key and where it came from (explicit, engine, random)."""
    if explicit:
        return hashlib.sha256(b"owc/response-id-key\0" + explicit.encode()).digest(), "explicit"
    if engine_key:
        return hmac.new(engine_key.encode(), b"owc/response-id-key/v1", hashlib.sha256).digest(), "engine"
    return os.urandom(32), "random"


class ResponseIds:
    def __init__(self, key: bytes, *, clock: Callable[[], float] = time.time, random_key: bool = False):
        """``random_key``: the key is this process's own (ids minted elsewhere or before a
        restart cannot verify here; a 404 then names KEY_ENV)."""
        self._key = key
        self._clock = clock
        self.random_key = random_key

    @classmethod
    def from_env(cls, engine_key: str | None, env: dict[str, str] | None = None) -> ResponseIds:
        env = os.environ if env is None else env
        key, source = derive_key(explicit=env.get(KEY_ENV), engine_key=engine_key)
        if source == "random":
            log.warning("neither %s nor an engine key is set: stored-response ids are valid on this gateway "
                        "process only", KEY_ENV)
        return cls(key, random_key=source == "random")

    def _tag(self, tenant: str, payload: bytes) -> bytes:
        return hmac.new(self._key, _DOMAIN + tenant.encode() + b"\0" + payload, hashlib.sha256).digest()[:_TAG]

    def mint(self, tenant: str, model: str, replica_id: str) -> str:
        m = model.encode()
        payload = _HEAD.pack(VERSION, int(self._clock()) & 0xFFFFFFFF, os.urandom(6), len(m)) + m \
            + replica_id.encode()
        return PREFIX + _b64(payload) + _b64(self._tag(tenant, payload))

    def verify(self, tenant: str, response_id: str, *, ttl_s: float | None = None) -> Owner | None:
        """The owner of an id this tenant was given; None for anything else (not ours,
        malformed, tampered, another tenant's, older than ``ttl_s``)."""
        if not isinstance(response_id, str) or not response_id.startswith(PREFIX) \
                or len(response_id) > MAX_ID_CHARS or len(response_id) < len(PREFIX) + _TAG_CHARS + 8:
            return None
        body = response_id[len(PREFIX):]
        try:
            payload, tag = _unb64(body[:-_TAG_CHARS]), _unb64(body[-_TAG_CHARS:])
        except (ValueError, TypeError):
            return None
        # base64 decoding is lenient: the id must be exactly what mint writes.
        if _b64(payload) + _b64(tag) != body or len(payload) < _HEAD.size:
            return None
        if not hmac.compare_digest(tag, self._tag(tenant, payload)):
            return None
        version, minted, _, mlen = _HEAD.unpack_from(payload)
        rest = payload[_HEAD.size:]
        if version != VERSION or len(rest) <= mlen:
            return None
        try:
            model, replica_id = rest[:mlen].decode(), rest[mlen:].decode()
        except UnicodeDecodeError:
            return None
        if ttl_s is not None and self._clock() - minted > ttl_s:
            return None
        return Owner(model=model, replica_id=replica_id, minted_s=minted)

    def expired(self, owner: Owner, ttl_s: float) -> bool:
        return self._clock() - owner.minted_s > ttl_s

