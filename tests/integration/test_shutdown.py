"""`owc serve` stops everything it started on SIGINT/SIGTERM within 30 s — mid-stream, during
engine start-up and while Ray starts: no Ray, Serve, vLLM or Redis process survives, the port
is free."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from cluster.config.gateway import GatewayReplicas
from cluster.process import free_port
from cluster.readiness import wait_gateways_ready
from tests.conftest import wait_for

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _serve(tmp_path: Path, model_cache: str) -> tuple[subprocess.Popen, int]:
    """`owc serve` with `make serve`'s own settings (the embedded default), on a free port."""
    cfg = yaml.safe_load((REPO / "cluster" / "config" / "default.yaml").read_text())
    port = free_port()
    cfg["gateway"]["port"] = port
    cfg["model_cache_dir"] = model_cache
    cfg["monitoring"] = {"file_sd_dir": str(tmp_path / "targets")}
    cfg["batch"] = {"store_dir": str(tmp_path / "batch")}  # its local Redis's data: the test's, not the user's
    path = tmp_path / "owc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # Its own process group, as a shell gives a job: the test runner is never in the groups checked.
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "serve", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, port


class Descendants:
    """Every process the server ever had below it, sampled until it exits."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.seen: dict[int, psutil.Process] = {}
        self.groups: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.2)

    def sample(self) -> None:
        try:
            for c in self.root.children(recursive=True):
                if c.pid not in self.seen:
                    self.seen[c.pid] = c
                    try:
                        group = os.getpgid(c.pid)
                    except ProcessLookupError:
                        continue
                    if group != os.getpgrp():
                        self.groups.add(group)
        except psutil.NoSuchProcess:
            pass

    def stop(self) -> None:
        self._stop.set()

    def names(self) -> set[str]:
        out = set()
        for p in list(self.seen.values()):
            try:
                out.add(" ".join(p.cmdline())[:120])
            except psutil.Error:
                pass
        return out

    def survivors(self) -> list[str]:
        """Live processes that were below the server, or share a process group with one
        (catches children spawned after the last sample, e.g. an engine core mid start-up)."""
        alive = []
        for p in psutil.process_iter():
            try:
                if p.pid in self.seen or os.getpgid(p.pid) in self.groups:
                    if p.status() != psutil.STATUS_ZOMBIE:
                        alive.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
            except (psutil.Error, ProcessLookupError):
                pass
        return alive


def _port_free(port: int) -> bool:
    """Nothing listens there and a new server could bind it (as servers do, SO_REUSEADDR)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        pass
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _stop_and_check(proc: subprocess.Popen, tree: Descendants, sig: int, port: int) -> None:
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("owc serve did not exit within 30s")
    took = time.monotonic() - t0
    # Within the same 30 s budget, everything below it must be gone too.
    try:
        wait_for(lambda: not tree.survivors(), max(1.0, 30 - took), "descendants to exit")
    except AssertionError:
        raise AssertionError(f"owc serve exited after {took:.1f}s, but 30s after the signal these live on: "
                             f"{tree.survivors()}") from None
    finally:
        tree.stop()
    assert tree.groups, "no descendant process was seen"
    assert _port_free(port)
    assert proc.returncode == 0, proc.stdout.read()


# SIGTERM mid-stream (what Kubernetes and systemd send), SIGINT during start-up below: both
# signals take one path (tests/unit/test_signals.py), so each real `owc serve` (~100 s of CI)
# covers one signal in one state rather than both signals in both.
@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_signal_mid_stream_stops_everything(tmp_path, model_cache, sig):
    proc, port = _serve(tmp_path, model_cache)
    tree = Descendants(proc.pid)
    url = f"http://127.0.0.1:{port}"
    try:
        # Every gateway process ready, as `owc serve` waits for before it says so (one 200 is one process).
        wait_gateways_ready(url, GatewayReplicas().start, 300)
        names = tree.names()
        assert any("cluster.engine.launch" in n for n in names) and any("raylet" in n for n in names)
        body = {"model": "tiny-llama", "prompt": "x", "max_tokens": 1000, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200, r.read()
            lines = r.iter_lines()
            tokens = 0
            for line in lines:
                tokens += line.startswith("data: {")
                if tokens == 2:
                    break  # tokens are flowing
            assert tokens == 2
            tree.sample()
            _stop_and_check(proc, tree, sig, port)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigint_during_engine_startup_stops_everything(tmp_path, model_cache):
    proc, port = _serve(tmp_path, model_cache)
    tree = Descendants(proc.pid)
    try:
        wait_for(lambda: any("cluster.engine.launch" in n for n in tree.names()), 300, "an engine process to start")
        assert not _ready(f"http://127.0.0.1:{port}")  # still starting up
        _stop_and_check(proc, tree, signal.SIGINT, port)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_while_ray_starts_stops_everything(tmp_path, model_cache):
    """A SIGTERM during ray.init (systemd or Kubernetes stopping it in its first seconds): Ray's
    own handler, installed by ray.init, ended owc serve with status 15 and no teardown, its
    local Redis and Ray's GCS left running (review 9)."""
    proc, port = _serve(tmp_path, model_cache)
    tree = Descendants(proc.pid)
    try:
        def ray_starting() -> bool:
            tree.sample()
            return any("gcs_server" in n for n in tree.names())

        wait_for(ray_starting, 120, "Ray's GCS to start", period_s=0.02)
        assert any("redis-server" in n for n in tree.names())  # the default's two gateway processes share one
        _stop_and_check(proc, tree, signal.SIGTERM, port)
    finally:
        if proc.poll() is None:
            proc.kill()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
