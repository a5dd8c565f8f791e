"""API keys as secrets: files hold the SHA-256 of each key (`sha256:<hex>`), never the key.

Keys are random (`owc keys create` makes 256-bit ones), so a plain SHA-256 is the right
lookup key: a dict hit per request, no per-request slow hash, no loop over candidates that
returns early on a match. Files of plaintext `key: tenant` entries still load, with a
warning, and are hashed as they load."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

HASH_PREFIX = "sha256:"
KEY_PREFIX = "owc-"


def hash_key(key: str) -> str:
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def is_hash(entry: str) -> bool:
    digest = entry[len(HASH_PREFIX):].lower()
    return entry.startswith(HASH_PREFIX) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def new_key() -> str:
    """A fresh random key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hashed(entries: Mapping[str, str], *, source: str = "") -> dict[str, str]:
    """`key-or-hash -> name` as `hash -> name`; plaintext entries are hashed (and warned of
    when they come from a file, ``source``)."""
    out: dict[str, str] = {}
    plain = 0
    for key, name in entries.items():
        if not isinstance(key, str) or not key or not isinstance(name, str) or not name:
            raise ValueError(f"{source or 'API keys'}: every entry must map a non-empty key (or its sha256:<hex>) to a "
                             "non-empty name, as strings (quote keys YAML would read as numbers)")
        if is_hash(key):
            out[key.lower()] = name
        else:
            plain += 1
            out[hash_key(key)] = name
    if plain and source:
        log.warning("%s holds %d plaintext API key(s): store SHA-256 hashes instead (`owc keys create`)", source, plain)
    return out


def _file_entries(p: Path) -> dict:
    """A keys file's entries as written (YAML or JSON: a mapping, optionally under `keys:`)."""
    data = yaml.safe_load(p.read_text()) or {}
    if isinstance(data, dict) and isinstance(data.get("keys"), dict):
        data = data["keys"]
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of key hash -> name")
    return data


def read_key_file(path: str | Path) -> dict[str, str]:
    """A keys file as `hash -> name`."""
    p = Path(path).expanduser()
    return hashed(_file_entries(p), source=str(p))


def parse_env(raw: str, var: str) -> dict[str, str]:
    """`key=name,key2=name2` (a key may be given as its hash) as `hash -> name`."""
    entries: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        key, sep, name = item.partition("=")
        if not sep:
            raise ValueError(f"{var}: expected key=name pairs separated by commas")
        entries[key.strip()] = name.strip()
    return hashed(entries)


def add_to_file(path: str | Path, key_hash: str, name: str) -> None:
    """Add one hashed entry to a keys file (created with mode 0600), keeping the others."""
    p = Path(path).expanduser()
    current = _file_entries(p) if p.exists() else {}
    current[key_hash] = name
    _write_entries(p, current)


def remove_from_file(path: str | Path, *, name: str | None = None, prefix: str | None = None) -> dict[str, str]:
    """Remove a keys file's entries of ``name``, or the one whose hash starts with ``prefix``
    (``sha256:`` optional; it must name exactly one); returns them, ``hash -> name``. Raises
    ValueError when nothing matches, or a prefix matches several."""
    p = Path(path).expanduser()
    current = _file_entries(p)
    by_hash = {(k.lower() if is_hash(k) else hash_key(k)): (k, v) for k, v in current.items()}  # plaintext ones too
    if prefix is not None:
        want = prefix.lower() if prefix.lower().startswith(HASH_PREFIX) else HASH_PREFIX + prefix.lower()
        gone = {h: kv for h, kv in by_hash.items() if h.startswith(want)}
        if len(gone) > 1:
            raise ValueError(f"{prefix} is the start of {len(gone)} keys' hashes in {p}: give more of it")
    else:
        gone = {h: kv for h, kv in by_hash.items() if kv[1] == name}
    if not gone:
        raise ValueError(f"no key of {name!r} in {p}" if prefix is None else f"no key hash starting {prefix} in {p}")
    for _, (k, _) in gone.items():
        del current[k]
    _write_entries(p, current)
    return {h: v for h, (_, v) in gone.items()}


def _write_entries(p: Path, current: dict) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# owc API keys: SHA-256 of each key -> name (tenant, or admin). `owc keys create` adds one.\n")
        yaml.safe_dump(current, f, sort_keys=True)
    os.replace(tmp, p)


class KeyTable:
    """`hash -> name`, looked up by the hash of the presented key."""

    def __init__(self, by_hash: Mapping[str, str]):
        self._by_hash = dict(by_hash)

    @classmethod
    def load(cls, *, files: Iterable[str | None], env_var: str | None,
             environ: Mapping[str, str] | None = None) -> KeyTable:
        by_hash: dict[str, str] = {}
        for f in files:
            if f:
                by_hash.update(read_key_file(f))
        env = os.environ if environ is None else environ
        if env_var and env.get(env_var):
            by_hash.update(parse_env(env[env_var], env_var))
        return cls(by_hash)

    def __len__(self) -> int:
        return len(self._by_hash)

    def __bool__(self) -> bool:
        return bool(self._by_hash)

    def lookup(self, key: str) -> str | None:
        by_hash = self._by_hash
        return by_hash.get(hash_key(key)) if by_hash else None  # no hash of every request's key for an empty table

    def replace(self, other: KeyTable) -> None:
        """Take ``other``'s entries (a reload): one reference swap, so a lookup sees the
        old table or the new one, never a mix."""
        self._by_hash = other._by_hash
