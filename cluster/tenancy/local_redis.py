"""`owc serve` on one machine: when the config's tenancy store is a Redis on this host and
nothing answers there, start Debian's `redis-server` for it (bound to loopback) and stop it
with the cluster. A Redis already listening is used as is.

Given a ``data_dir``, it keeps its data there in an append-only file (fsync'd each second), so
that what lives in it — batch and file records, tenants' daily and monthly usage — outlives a
restart of `owc serve`. One server at a time uses a directory (a lock file): a second `owc
serve` on the same directory gets a server without persistence, and says so (``persistent``)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


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

    @classmethod
    def ensure(cls, url: str, *, data_dir: Path | None = None, timeout_s: float = 10.0) -> LocalRedis:
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
        # The server holds the lock too (an inherited fd): one that outlives an `owc serve` killed
        # without its cleanup keeps the directory to itself, and the next run does without.
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1" if host != "::1" else "::1",
                                 "--save", "", *keep],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                pass_fds=(lock,) if lock is not None else ())
        deadline = time.monotonic() + timeout_s
        while not _listening(host, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                if lock is not None:
                    os.close(lock)
                raise RuntimeError(f"redis-server for gateway.store {url} did not start"
                                   + (f" (its data: {data_dir})" if lock is not None else ""))
            time.sleep(0.05)
        if lock is not None:  # where `owc usage` finds it while it runs (its port is free-picked)
            with contextlib.suppress(OSError):
                (data_dir / URL_FILE).write_text(url)
        return cls(proc, persistent=lock is not None, lock=lock)

    def stop(self) -> None:
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
