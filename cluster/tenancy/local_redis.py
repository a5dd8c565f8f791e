"""`owc serve` on one machine: when the config's tenancy store is a Redis on this host and
nothing answers there, start Debian's `redis-server` for it (no persistence: `--save ""`,
bound to loopback) and stop it with the cluster. A Redis already listening is used as is."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
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


class LocalRedis:
    """The redis-server owc started (None when it started none)."""

    def __init__(self, proc: subprocess.Popen | None):
        self.proc = proc

    @classmethod
    def ensure(cls, url: str, *, timeout_s: float = 10.0) -> LocalRedis:
        addr = local_address(url)
        if addr is None or _listening(*addr):
            return cls(None)
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(f"gateway.store {url} is not listening and redis-server is not installed "
                               "(`make tools` installs it)")
        host, port = addr
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1" if host != "::1" else "::1",
                                 "--save", "", "--appendonly", "no"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not _listening(host, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"redis-server for gateway.store {url} did not start")
            time.sleep(0.05)
        return cls(proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
