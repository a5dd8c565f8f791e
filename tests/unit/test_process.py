"""A supervised server (cluster.process.ServerProcess) killed from outside: what it started
(vLLM's engine core under its API server) is not left running. Review 9 saw a SIGKILLed engine
server's `VLLM::EngineCore` live on, 1.5 GB and 0.4 core, past `owc serve`'s own stop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from types import SimpleNamespace

import pytest

from cluster.engine.replica import EngineReplica, EngineUnhealthy
from cluster.process import Command, ServerProcess
from loadtests.engine_faults import still_running
from tests.conftest import wait_for

# A server that starts a child in its own process group, as vLLM's API server starts its engine core.
PARENT = "import subprocess, sys, time; c = subprocess.Popen(['sleep', '300']); open(sys.argv[1], 'w').write(str(c.pid)); time.sleep(300)"


def _running(pid: int) -> bool:
    return bool(still_running([pid]))


def _killed_server(tmp_path) -> tuple[ServerProcess, int]:
    """A started server whose child runs, the server then SIGKILLed: (it, the child's pid)."""
    pid_file = tmp_path / "child.pid"
    proc = ServerProcess(Command([sys.executable, "-c", PARENT, str(pid_file)]))
    proc.start()
    child = wait_for(lambda: pid_file.exists() and pid_file.read_text() and int(pid_file.read_text()), 20,
                     "the server's child")
    os.kill(proc.pid, signal.SIGKILL)
    wait_for(lambda: not proc.alive(), 10, "the server gone")
    time.sleep(0.2)
    assert _running(child)  # orphaned, still running: what the replica must not leave
    return proc, child


def test_a_killed_servers_children_are_reaped(tmp_path):
    proc, child = _killed_server(tmp_path)
    try:
        proc.reap()
        wait_for(lambda: not _running(child), 5, "the orphaned child killed")
    finally:
        proc.stop(grace_s=1)


def test_the_engine_replicas_health_check_reaps_a_dead_engines_group(tmp_path):
    """Serve's health check is the first to see the engine gone: it kills what the engine left
    before Serve replaces the replica."""
    proc, child = _killed_server(tmp_path)
    try:
        with pytest.raises(EngineUnhealthy, match="exited"):
            asyncio.run(EngineReplica.check_health(SimpleNamespace(_proc=proc)))
        wait_for(lambda: not _running(child), 5, "the orphaned child killed")
    finally:
        proc.stop(grace_s=1)


def test_a_gateway_process_that_exits_says_why_in_its_health_check(tmp_path):
    """Its start is judged on the shared API port, where another gateway process may answer
    for it: its exit then reaches Serve through the health check, which now carries the end of
    its log (before: "gateway process exited with code 2" and nothing else)."""
    import asyncio

    from cluster.gateway.edge.deployment import GatewayReplica

    proc = ServerProcess(Command([sys.executable, "-c", "import sys; sys.exit('gateway: [Errno 98] Address already in use')"]),
                         log_path=tmp_path / "gateway.log")
    proc.start()
    wait_for(lambda: not proc.alive(), 10, "the process gone")
    class Replica(GatewayReplica):
        def __del__(self) -> None:  # Serve's stop: nothing was started here
            pass

    replica = object.__new__(Replica)  # its Serve constructor starts a whole gateway
    replica._proc = proc
    with pytest.raises(RuntimeError) as e:
        asyncio.run(replica.check_health())
    assert "exited with code 1" in str(e.value) and "Address already in use" in str(e.value), e.value
