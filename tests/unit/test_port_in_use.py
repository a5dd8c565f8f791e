"""A gateway port that is already taken is refused up front, with what to do, no traceback:
`owc serve` before Ray and the engines start (before: minutes later, "RuntimeError: Traceback"
and a log path already deleted; and another owc's gateway processes on the port were joined
silently, the kernel splitting the connections between the two clusters), `owc gateway` before
it binds (before: an OSError traceback, or the same silent sharing)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from cluster.cli import app
from cluster.process import free_port
from tests.conftest import REPO


def listener(port: int, *, reuseport: bool) -> socket.socket:
    """What holds the port: another program, or (reuseport) another owc's gateway process."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


@pytest.mark.parametrize("reuseport", [False, True], ids=["another-program", "another-owc"])
def test_owc_serve_refuses_a_taken_port_before_starting_anything(tmp_path, monkeypatch, reuseport):
    import cluster.runner

    def no_cluster(*a, **k):
        raise AssertionError("owc serve went on to start a cluster on a taken port")

    monkeypatch.setattr(cluster.runner, "LocalCluster", no_cluster)
    port = free_port()
    cfg = tmp_path / "owc.yaml"
    cfg.write_text(yaml.safe_dump({"models": {"m": {"source": "demo:tiny-llama"}}, "gateway": {"port": port}}))
    with listener(port, reuseport=reuseport):
        r = CliRunner().invoke(app, ["serve", str(cfg)])
    assert r.exit_code == 2, (r.output, r.exception)
    assert f"port {port} on 127.0.0.1 is already in use" in r.output and "gateway.port" in r.output, r.output
    assert f"owc status --url http://127.0.0.1:{port}" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("gateway, refused", [
    ({}, "gateway.metrics_port is fixed ({mp}), but gateway.replicas allows 2 gateway processes"),  # the default 2
    ({"replicas": {"min": 1, "max": 3}}, "allows 3 gateway processes"),  # autoscaled up to 3
    ({"replicas": 1, "taken": True}, "port {mp} on 127.0.0.1 is already in use"),
    ({"replicas": 1}, None),  # one process: its port of its own
], ids=["two-processes", "autoscaled", "one-process-port-taken", "one-process"])
def test_owc_serve_refuses_a_fixed_metrics_port_that_cannot_bind(tmp_path, monkeypatch, gateway, refused):
    """A fixed metrics port is one process's: before, with owc serve's default two gateway
    processes, the second failed to bind it and Serve retried it for as long as the cluster ran
    ("gateway process exited with code 2")."""
    import cluster.runner

    class Started(Exception):
        pass

    def started(*a, **k):
        raise Started

    monkeypatch.setattr(cluster.runner, "LocalCluster", started)
    mp, gw = free_port(), dict(gateway)
    taken = gw.pop("taken", False)
    cfg = tmp_path / "owc.yaml"
    cfg.write_text(yaml.safe_dump({"models": {"m": {"source": "demo:tiny-llama"}},
                                   "gateway": {"port": free_port(), "metrics_port": mp, **gw}}))
    with listener(mp, reuseport=False) if taken else contextlib.nullcontext():
        r = CliRunner().invoke(app, ["serve", str(cfg)])
    if refused is None:
        assert isinstance(r.exception, Started), r.output
        return
    assert r.exit_code == 2, (r.output, r.exception)
    assert "refusing to start" in r.output and refused.format(mp=mp) in r.output and "Traceback" not in r.output


def test_owc_serve_on_a_ray_of_your_own_does_not_check_this_host(tmp_path, monkeypatch):
    """With ray.address the gateway processes run wherever Serve places them."""
    import cluster.runner

    class Started(Exception):
        pass

    def started(*a, **k):
        raise Started

    monkeypatch.setattr(cluster.runner, "LocalCluster", started)
    port = free_port()
    cfg = tmp_path / "owc.yaml"
    cfg.write_text(yaml.safe_dump({"models": {"m": {"source": "demo:tiny-llama"}}, "gateway": {"port": port},
                                   "ray": {"address": "127.0.0.1:1"}}))
    with listener(port, reuseport=False):
        r = CliRunner().invoke(app, ["serve", str(cfg)])
    assert isinstance(r.exception, Started), r.output


@pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT semantics of Linux")
@pytest.mark.parametrize("reuseport", [False, True], ids=["another-program", "another-owc"])
def test_owc_gateway_refuses_a_taken_port(reuseport):
    port = free_port()
    argv = [sys.executable, "-m", "cluster.cli", "gateway", "--upstream", "m=http://127.0.0.1:9",
            "--port", str(port), "--metrics-port", str(free_port())]
    with listener(port, reuseport=reuseport):
        try:  # a gateway that joins the port serves on: that is the failure, not a hang
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO)
        except subprocess.TimeoutExpired:
            pytest.fail("owc gateway started on a port another gateway holds")
    output = r.stdout + r.stderr
    assert r.returncode == 2, output
    assert f"port {port} on 127.0.0.1 is already in use" in output and "--port" in output, output
    assert "Traceback" not in output


def test_every_local_cluster_refuses_a_shared_fixed_metrics_port(tmp_path):
    """Not only `owc serve`: a LocalCluster started by other code (the load tests) refuses it
    too, before Ray or anything else starts (loadtests.rollout_real --gateways 2 ran one)."""
    from cluster.config.loader import parse_config
    from cluster.gateway.edge.server import UnsafeBindError
    from cluster.runner import LocalCluster

    cfg = parse_config({"models": {"m": {"source": "demo:tiny-llama"}},
                        "gateway": {"port": free_port(), "metrics_port": free_port(), "replicas": 2},
                        "model_cache_dir": str(tmp_path)})
    with pytest.raises(UnsafeBindError, match="metrics_port is fixed"):
        LocalCluster(cfg, temp_dir=str(tmp_path)).start()
    assert not list(tmp_path.iterdir())  # nothing built or started
