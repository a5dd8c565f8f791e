"""An engine vLLM refuses to start: `owc serve` prints the engine's own error (not only Serve's
"Failed to update the deployments"), its log file and what to change, exits 1, and leaves
none of its processes behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from cluster.process import free_port
from tests.conftest import wait_for
from tests.integration.conftest import model_entry
from tests.integration.test_shutdown import Descendants

pytestmark = pytest.mark.integration


def test_engine_refusal_reaches_the_terminal(tmp_path, model_cache):
    # vLLM refuses a max_model_len beyond the model's 4096 positions as it builds its config:
    # deterministic, and the fastest refusal there is (no engine core is started).
    cfg = {
        "models": {"m": model_entry(max_model_len=100_000)},
        "gateway": {"host": "127.0.0.1", "port": free_port()},
        "model_cache_dir": model_cache,
        "monitoring": {"file_sd_dir": str(tmp_path / "targets")},
        "batch": {"store_dir": str(tmp_path / "batch")},  # its local Redis's data: the test's own
    }
    path = tmp_path / "owc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # Serve gives up after one failed start instead of three: the same refusal, a third of the time.
    env = {**os.environ, "RAY_SERVE_MAX_PER_REPLICA_RETRY_COUNT": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "serve", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    tree = Descendants(proc.pid)
    try:
        out, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # its own teardown, then what it printed
        out, _ = proc.communicate(timeout=30)
        raise AssertionError(f"owc serve still running after 150s:\n{out}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    took = time.monotonic() - t0
    try:
        wait_for(lambda: not tree.survivors(), 20, "owc serve's processes to exit")
    except AssertionError:
        raise AssertionError(f"left running after owc serve exited: {tree.survivors()}") from None
    finally:
        tree.stop()
    assert tree.groups, "no descendant process was seen"
    assert proc.returncode == 1, out
    assert "engine m did not start:" in out, out
    assert "User-specified max_model_len (100000) is greater than the derived max_model_len" in out, out
    assert "fix: `models.m.max_model_len` is beyond the model's own context length" in out, out
    log = re.search(r"engine log: (\S+)", out)
    assert log, out
    with open(log.group(1)) as f:
        assert "User-specified max_model_len (100000)" in f.read()
    print(f"owc serve exited after {took:.1f}s:\n{out}")
