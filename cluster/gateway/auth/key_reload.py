"""Credentials that change without a restart: the tenant and admin keys files (and a JWKS
file) are checked every `gateway.keys_reload_s` and reloaded when they changed; SIGHUP
reloads at once. A file counts as changed when its (mtime, size, inode) does, read through
symlinks, so a Kubernetes Secret update (kubelet swaps the `..data` link) is seen too. A
reload swaps each table in one reference assignment: no request fails because of it. A
file that no longer loads (half-written, bad YAML) keeps the keys in force and is retried
at the next check; the failure is logged and counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.gateway.auth.keys import KeyTable
from cluster.periodic import Periodic

log = logging.getLogger(__name__)
Signature = tuple[int, int, int] | None


def signature(path: str) -> Signature:
    try:
        st = os.stat(Path(path).expanduser())  # follows symlinks: a Secret's ..data swap changes the inode
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


@dataclass
class Watched:
    """Files, and what to do when one of them changed (raises when they do not load)."""

    name: str
    paths: Sequence[str]
    load: Callable[[], None]
    seen: tuple[Signature, ...] = ()

    def __post_init__(self) -> None:
        self.seen = self.current()

    def current(self) -> tuple[Signature, ...]:
        return tuple(signature(p) for p in self.paths)


def key_table_reload(table: KeyTable, *, files: Sequence[str | None], env_var: str | None) -> Callable[[], None]:
    """Rebuild ``table`` from its files and environment variable (the variable cannot change
    under a running process; it is read again so its keys stay in the table)."""
    def load() -> None:
        table.replace(KeyTable.load(files=files, env_var=env_var))
    return load


def jwks_reload(verifier, path: str) -> Callable[[], None]:
    def load() -> None:
        verifier.set_jwks(json.loads(Path(path).expanduser().read_text()))
    return load


class KeyReloader:
    def __init__(self, watched: Sequence[Watched], *, period_s: float,
                 on_result: Callable[[str, str], None] | None = None):
        self._watched = [w for w in watched if w.paths]
        self.on_result = on_result or (lambda name, result: None)
        self._forced = False  # SIGHUP: reload everything at the next (immediate) check
        self._loop = Periodic(self._tick, period_s=period_s, what="key reload", log=log, first_after=True)

    def check(self, *, force: bool = False) -> list[str]:
        """Reload what changed (everything with ``force``); the names reloaded."""
        done = []
        for w in self._watched:
            now = w.current()
            if now == w.seen and not force:
                continue
            try:
                w.load()
            except Exception as e:  # noqa: BLE001 - any load failure keeps the old keys
                log.error("reloading %s failed; the keys in force stay: %s", w.name, e)
                self.on_result(w.name, "failed")
                continue  # w.seen unchanged: retried at the next check
            w.seen = now
            done.append(w.name)
            log.warning("reloaded %s", w.name)
            self.on_result(w.name, "ok")
        return done

    def _tick(self) -> None:
        force, self._forced = self._forced, False
        self.check(force=force)

    def reload_now(self) -> None:
        """SIGHUP's handler: reload every watched file at once."""
        self._forced = True
        self._loop.wake()

    async def start(self) -> None:
        if not self._watched:
            return
        self._loop.start()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread: no SIGHUP
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload_now)

    async def stop(self) -> None:
        if not self._loop.running:
            return
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await self._loop.stop()
