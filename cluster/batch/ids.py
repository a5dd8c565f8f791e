"""owc's ids for files and batches: random (a tenant cannot guess another's), and the only names a
file's content has on disk, so nothing a client sends ever becomes a path."""

from __future__ import annotations

import re
import secrets

FILE_PREFIX, BATCH_PREFIX = "file-", "batch_"
_FILE = re.compile(r"^file-[A-Za-z0-9]{24}$")
_BATCH = re.compile(r"^batch_[A-Za-z0-9]{24}$")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _random(n: int = 24) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def new_file_id() -> str:
    return FILE_PREFIX + _random()


def new_batch_id() -> str:
    return BATCH_PREFIX + _random()


def is_file_id(s: str) -> bool:
    return bool(_FILE.match(s))


def is_batch_id(s: str) -> bool:
    return bool(_BATCH.match(s))
