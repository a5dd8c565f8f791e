"""`owc serve` on one machine: when the config's tenancy store is a Redis on this host and
nothing answers there, start Debian's `redis-server` for it (bound to loopback) and stop it
with the cluster. A Redis already listening is used as is.

Given a ``data_dir``, it keeps its data there in an append-only file (fsync'd each second), so
that what lives in it — batch and file records, tenants' daily and monthly usage — outlives a
restart of `owc serve`. One server at a time uses a directory (a lock file): a second `owc
serve` on the same directory gets a server without persistence, and says so (``persistent``).

``restart``: a server that exits while `owc serve` runs (killed, out of memory) is started
again on its port and directory (its data back from the append-only file, up to its last
second), after 1 s, then 2, 4... up to 30 s while it keeps failing to start; the gateway
processes meanwhile fall back as for any store outage (per process, their metric says so)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger(__name__)


def local_address(url: str) -> tuple[str, int] | None:
    """(host, port) of a ``redis://`` URL on this host; None for any other."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or parts.hostname not in LOCAL_HOSTS:
        return None
    return parts.hostname, parts.port or 6379


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def lock_dir(data_dir: Path) -> int | None:
    """An exclusive lock on ``data_dir`` (its fd), or None while another process holds it (or
    the directory cannot be written: then no persistence, rather than no store)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(data_dir / "owc.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


URL_FILE = "url"


def local_store_url(data_dir: Path) -> str | None:
    """The URL of the Redis `owc serve` last started on ``data_dir`` (it may have stopped since)."""
    try:
        return (data_dir / URL_FILE).read_text().strip() or None
    except OSError:
        return None


class LocalRedis:
    """The redis-server owc started (None when it started none); ``persistent``: its data is
    kept in a directory of its own across restarts."""

    def __init__(self, proc: subprocess.Popen | None, *, persistent: bool = False, lock: int | None = None):
        self.proc = proc
        self.persistent = persistent
        self._lock = lock
        self._stopping = threading.Event()
        self._guard = threading.Lock()  # a restart and stop() one at a time
        self.restarts = 0

    @classmethod
    def ensure(cls, url: str, *, data_dir: Path | None = None, timeout_s: float = 10.0,
               restart: bool = False) -> LocalRedis:
        addr = local_address(url)
        if addr is None or _listening(*addr):
            return cls(None)
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(f"gateway.store {url} is not listening and redis-server is not installed "
                               "(`make tools` installs it)")
        host, port = addr
        lock = lock_dir(data_dir) if data_dir is not None else None
        keep = ["--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "everysec"] if lock is not None \
            else ["--appendonly", "no"]
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1" if host != "::1" else "::1", "--save", "", *keep]
        try:
            proc = _launch(argv, host, port, lock, timeout_s)
        except RuntimeError:
            if lock is not None:
                os.close(lock)
            raise RuntimeError(f"redis-server for gateway.store {url} did not start"
                               + (f" (its data: {data_dir})" if lock is not None else "")) from None
        if lock is not None:  # where `owc usage` finds it while it runs (its port is free-picked)
            with contextlib.suppress(OSError):
                (data_dir / URL_FILE).write_text(url)
        redis = cls(proc, persistent=lock is not None, lock=lock)
        if restart:
            threading.Thread(target=redis._watch, args=(argv, host, port, url, timeout_s), daemon=True,
                             name="owc-local-redis").start()
        return redis

    def _watch(self, argv: list[str], host: str, port: int, url: str, timeout_s: float) -> None:
        """Starts the server again each time it exits, until stop()."""
        backoff = 1.0
        while not self._stopping.wait(backoff if self.proc is None else 0.5):
            with self._guard:
                if self._stopping.is_set():
                    return
                if self.proc is not None:
                    code = self.proc.poll()
                    if code is None:
                        backoff = 1.0
                        continue
                    log.warning("redis-server for %s exited (%s): starting it again in %.0f s", url, code, backoff)
                    self.proc = None
                    continue
                try:
                    self.proc = _launch(argv, host, port, self._lock, timeout_s)
                except RuntimeError as e:
                    backoff = min(30.0, backoff * 2)
                    log.warning("redis-server for %s: %s; trying again in %.0f s", url, e, backoff)
                    continue
                self.restarts += 1
                log.warning("redis-server for %s started again", url)

    def stop(self) -> None:
        self._stopping.set()
        with self._guard:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()  # a clean shutdown: the append-only file is flushed first
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            self.proc = None
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None


def _launch(argv: list[str], host: str, port: int, lock: int | None, timeout_s: float) -> subprocess.Popen:
    """redis-server, once it listens. The server holds the lock too (an inherited fd): one that
    outlives an `owc serve` killed without its cleanup keeps the directory to itself, and the
    next run does without."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            pass_fds=(lock,) if lock is not None else ())
    deadline = time.monotonic() + timeout_s
    while not _listening(host, port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError("it did not start")
        time.sleep(0.05)
    return proc
