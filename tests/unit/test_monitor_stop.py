"""`owc monitor` stops its Prometheus on SIGINT and SIGTERM, also when it was started with
SIGINT ignored (a background job of a shell, nohup): a Prometheus outliving its monitor
keeps its port and scrapes forever (found in a fresh-clone CI run started in the background)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest
import yaml

from cluster.process import free_port
from tests.conftest import wait_for
from tests.tools import tool


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_monitor_stops_its_prometheus_even_with_sigint_ignored_at_start(tmp_path, sig):
    (tmp_path / "sd").mkdir()
    cfg = tmp_path / "owc.yaml"
    cfg.write_text(yaml.safe_dump({"models": {"m": {"source": "external"}},
                                   "monitoring": {"file_sd_dir": str(tmp_path / "sd")}}))
    env = {**os.environ, "PATH": f"{os.path.dirname(tool('prometheus'))}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "monitor", str(cfg), "--port", str(free_port()),
         "--data-dir", str(tmp_path / "prom")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # as a shell's background job starts
    try:
        assert "Prometheus at" in proc.stdout.readline()
        (prometheus,) = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(sig)
        proc.wait(timeout=15)
        wait_for(lambda: not prometheus.is_running() or prometheus.status() == psutil.STATUS_ZOMBIE, 10,
                 "Prometheus to stop with its monitor")
    finally:
        for p in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []:
            p.kill()
        if proc.poll() is None:
            proc.kill()
