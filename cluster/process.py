"""A supervised HTTP server process (a vLLM engine, the fake engine, a gateway): start it
on a loopback port, wait until /health answers, probe it, stop it with its whole process
group. Each such process watches its parent and dies with it (see `watch_parent`)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerStartError(RuntimeError):
    pass


@dataclass
class Command:
    """What to run: argv with `{port}` filled in, plus extra environment."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


class ServerProcess:
    def __init__(
        self,
        command: Command,
        *,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        health_path: str = "/health",
    ):
        self.port = port or free_port(host)
        self._health_path = health_path
        self.url = f"http://{host}:{self.port}"
        self._command = command
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        argv = [a.replace("{port}", str(self.port)) for a in self._command.argv]
        env = {**os.environ, **self._command.env}
        out = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            # A new session: the engine and its TP workers form one group we can kill.
            self._proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            if self._log_path:
                out.close()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise ServerStartError(f"process exited with code {self.returncode} during start-up{self.log_hint()}")
                if await self.probe(session, timeout_s=2.0):
                    return
                await asyncio.sleep(0.25)
        raise ServerStartError(f"process not healthy after {timeout_s:.0f}s{self.log_hint()}")

    async def probe(self, session: aiohttp.ClientSession, timeout_s: float) -> bool:
        try:
            async with session.get(self.url + self._health_path, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def log_hint(self) -> str:
        """The log's path and its end, to append to an error that says why the process stopped."""
        if not self._log_path or not self._log_path.exists():
            return ""
        with open(self._log_path, "rb") as f:  # its end only: a long-lived process's log can be large
            f.seek(max(0, f.seek(0, 2) - 2000))
            tail = f.read().decode(errors="replace")
        return f"; log {self._log_path}:\n{tail}"

    def reap(self) -> None:
        """The server has exited (killed, crashed): what it started and left in its group
        (vLLM's engine core, tensor-parallel workers, each holding the model's memory, on a
        GPU host its GPU's) is killed now, not at the replica's stop, which may never come."""
        if self._proc is not None and self._proc.poll() is not None:
            _killpg(self._proc.pid, signal.SIGKILL)

    async def stop_async(self, grace_s: float = 10.0) -> None:
        """``stop`` for async code: waits without blocking the event loop."""
        proc = self._proc
        if proc is None:
            return
        _killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        _killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the group, then SIGKILL what is left after ``grace_s`` (blocks: from
        async code use ``stop_async``)."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid
        _killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        _killpg(pgid, signal.SIGKILL)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def watch_parent(parent_pid: int) -> None:
    """Start a thread that kills this process group once the parent ``parent_pid`` is gone
    (even by SIGKILL), so no supervised process outlives its Ray replica."""
    def loop() -> None:
        while True:
            if os.getppid() != parent_pid:
                os.killpg(os.getpgrp(), signal.SIGKILL)
            time.sleep(0.5)

    if parent_pid:
        threading.Thread(target=loop, name="watch-parent", daemon=True).start()
