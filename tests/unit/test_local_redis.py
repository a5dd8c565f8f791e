"""`owc serve`'s local tenancy store: started when the config's Redis on this host is not
listening, reused when it is, stopped with the cluster; other hosts are left alone."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from cluster.process import free_port
from cluster.tenancy.local_redis import LocalRedis, local_address
from tests.conftest import wait_for

@pytest.mark.parametrize(("url", "addr"), [
    ("redis://127.0.0.1:7001/0", ("127.0.0.1", 7001)),
    ("redis://localhost/0", ("localhost", 6379)),
    ("redis://redis.svc:6379/0", None),
    ("rediss://127.0.0.1:7001/0", None),  # TLS: not a server owc would start
])
def test_local_address(url, addr):
    assert local_address(url) == addr


def test_started_when_absent_reused_when_present_and_stopped():
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    started = LocalRedis.ensure(url)
    try:
        assert started.proc is not None
        assert redis.Redis(port=port).ping()
        again = LocalRedis.ensure(url)  # already listening: owc starts no second one
        assert again.proc is None
        again.stop()
        assert redis.Redis(port=port).ping()
    finally:
        started.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_connect_timeout=0.5).ping()


def test_its_data_outlives_a_restart_in_its_directory_and_one_server_holds_it(tmp_path):
    """What `owc serve`'s own Redis holds (batch and file records, tenants' usage) is there again
    after a restart — on another port, as the fair-sharing store's is free-picked each time."""
    data = tmp_path / "redis"
    first = LocalRedis.ensure(f"redis://127.0.0.1:{(port := free_port())}/0", data_dir=data)
    try:
        assert first.persistent
        redis.Redis(port=port).set("owc:batch:b1", "record")
        # a second server on the same directory while the first runs: started, but keeps nothing there
        other = LocalRedis.ensure(f"redis://127.0.0.1:{(port2 := free_port())}/0", data_dir=data)
        assert other.proc is not None and not other.persistent
        assert redis.Redis(port=port2).get("owc:batch:b1") is None
        other.stop()
    finally:
        first.stop()
    again = LocalRedis.ensure(f"redis://127.0.0.1:{(port3 := free_port())}/0", data_dir=data)
    try:
        assert again.persistent and redis.Redis(port=port3).get("owc:batch:b1") == b"record"
    finally:
        again.stop()
    without = LocalRedis.ensure(f"redis://127.0.0.1:{(port4 := free_port())}/0")  # no directory: nothing kept
    try:
        assert not without.persistent and redis.Redis(port=port4).get("owc:batch:b1") is None
    finally:
        without.stop()


def test_owc_serve_keeps_its_stores_data_beside_the_batch_files(tmp_path):
    from cluster.config.schema import OwcConfig
    from cluster.runner import LocalCluster

    cfg = OwcConfig.model_validate({"models": {"m": {"source": "external"}},
                                    "batch": {"store_dir": str(tmp_path / "batch")}})
    warnings: list[str] = []
    one, two = LocalCluster(cfg, temp_dir=str(tmp_path / "ray1")), LocalCluster(cfg, temp_dir=str(tmp_path / "ray2"))
    try:
        one._start_fair_share_store(warnings.append)
        assert one._redis.persistent and (tmp_path / "batch" / "redis" / "appendonlydir").is_dir()
        assert one.cfg.gateway.fair_sharing.store_url  # the gateway processes are pointed at it
        assert warnings == []
        two._start_fair_share_store(warnings.append)  # a second `owc serve` on the same directory
        assert not two._redis.persistent and "last only until it stops" in warnings[0]
    finally:
        for r in (one, two):
            if r._redis is not None:
                r._redis.stop()


def test_a_server_left_running_keeps_its_directory_and_an_unwritable_one_means_no_persistence(tmp_path):
    """The lock lives as long as the server (an inherited fd): an `owc serve` killed without its
    cleanup leaves a server that still holds it, and the next run keeps nothing there rather than
    a second server writing the same append-only file."""
    data = tmp_path / "redis"
    left = LocalRedis.ensure(f"redis://127.0.0.1:{free_port()}/0", data_dir=data)
    assert left.persistent
    os.close(left._lock)  # what the death of `owc serve` does to its own fd: the server keeps its copy
    left._lock = None
    try:
        nxt = LocalRedis.ensure(f"redis://127.0.0.1:{free_port()}/0", data_dir=data)
        try:
            assert nxt.proc is not None and not nxt.persistent
        finally:
            nxt.stop()
    finally:
        left.stop()
    again = LocalRedis.ensure(f"redis://127.0.0.1:{free_port()}/0", data_dir=data)  # the server gone: free
    try:
        assert again.persistent
    finally:
        again.stop()
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    nowhere = LocalRedis.ensure(f"redis://127.0.0.1:{free_port()}/0", data_dir=blocked / "redis")
    try:
        assert nowhere.proc is not None and not nowhere.persistent
    finally:
        nowhere.stop()


def test_owc_serve_stops_its_store_after_the_gateways(tmp_path, monkeypatch):
    """The gateway processes drain their streams during Serve's shutdown and settle their usage
    in the store: it stops after Ray's end (it stopped first, and the drained requests' usage
    and the batch runners met a refused connection). Also when Ray's end fails."""
    from cluster.config.schema import OwcConfig
    from cluster.runner import LocalCluster

    cfg = OwcConfig.model_validate({"models": {"m": {"source": "external"}},
                                    "batch": {"store_dir": str(tmp_path / "batch")}})
    c = LocalCluster(cfg, temp_dir=str(tmp_path / "ray"))
    c._start_fair_share_store(lambda _: None)
    proc = c._redis.proc
    seen: list[bool] = []

    def ray_end(_timeout: float) -> None:
        seen.append(proc.poll() is None)
        raise RuntimeError("ray.shutdown failed")

    monkeypatch.setattr(c, "_stop_ray", ray_end)
    with pytest.raises(RuntimeError):
        c.stop()
    assert seen == [True] and c._redis is None and proc.poll() is not None


@pytest.mark.parametrize(("gateway", "shared"), [
    ({"tenants": {"acme": {"requests_per_minute": 60, "daily_tokens": 1000}}}, True),  # owc serve's defaults + limits
    ({"tenants": {"acme": {"max_concurrent": 4}}, "replicas": 1}, True),  # one process: its quotas outlive a restart
    ({"tenants": {"acme": {"weight": 3, "priority": 1}}}, False),  # no limit to count
    ({}, False),
    ({"tenants": {"acme": {"daily_tokens": 1000}}, "store": {"url": "redis://10.0.0.5:6379/0"}}, False),  # its own
])
def test_owc_serve_counts_tenants_limits_in_its_local_store(tmp_path, gateway, shared):
    """owc serve's defaults (two gateway processes, no gateway.store) with tenant limits: the
    local Redis it starts anyway carries them, so the limits hold across both processes and a
    daily quota outlives a restart. Before, each process counted alone: max_concurrent 4 let 8
    requests run through the one port, and the day's usage restarted at zero."""
    from cluster.config.schema import OwcConfig
    from cluster.local_stores import needs_tenancy_store
    from cluster.runner import LocalCluster

    cfg = OwcConfig.model_validate({"models": {"m": {"source": "external"}}, "gateway": gateway,
                                    "batch": {"store_dir": str(tmp_path / "batch")}})
    assert needs_tenancy_store(cfg) == shared
    if not shared:
        return
    c = LocalCluster(cfg, temp_dir=str(tmp_path / "ray"))
    c._start_fair_share_store(lambda _: None)
    try:
        store = c.cfg.gateway.store  # what the gateway processes are given
        assert store is not None and store.url == c.cfg.gateway.fair_sharing.store_url
        assert redis.Redis.from_url(store.url).ping() and c._redis.persistent
    finally:
        c._redis.stop()


def test_owc_usage_finds_the_redis_owc_serve_runs(tmp_path):
    """owc serve's Redis (tenants' usage: cluster.local_stores) listens on a port picked at its
    start: `owc usage --config` of that cluster finds it (the URL it leaves beside its data),
    says when it is not running, and when nothing was ever started there."""
    import json

    import yaml
    from typer.testing import CliRunner

    from cluster.cli import app

    config = tmp_path / "owc.yaml"
    config.write_text(yaml.safe_dump({"models": {"m": {"source": "external"}},
                                      "batch": {"store_dir": str(tmp_path / "batch")}}))
    usage = lambda: CliRunner().invoke(app, ["usage", "--config", str(config), "--format", "json"])  # noqa: E731
    r = usage()
    assert r.exit_code == 2 and "no tenancy store found" in r.output
    store = LocalRedis.ensure(f"redis://127.0.0.1:{free_port()}/0", data_dir=tmp_path / "batch" / "redis")
    try:
        r = usage()
        assert r.exit_code == 0 and json.loads(r.output) == [], r.output
    finally:
        store.stop()
    r = usage()
    assert r.exit_code == 1 and "is owc serve running?" in r.output


def test_a_server_that_dies_while_owc_serve_runs_is_started_again_with_its_data(tmp_path):
    """`owc serve`'s Redis (restart=True) SIGKILLed: it listens again on its port, with what it
    held up to its last fsync'd second; stopped by owc, it stays stopped. Without restart, a
    dead server stays dead."""
    data = tmp_path / "redis"
    port = free_port()
    r = LocalRedis.ensure(f"redis://127.0.0.1:{port}/0", data_dir=data, restart=True)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        client.set("owc:usage:t1", "41")
        time.sleep(1.5)  # the append-only file's fsync, each second
        first = r.proc
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: r.restarts == 1, 20, "the server started again")
        assert r.proc is not None and r.proc.pid != first.pid and r.persistent
        assert client.get("owc:usage:t1") == b"41"
    finally:
        r.stop()
    time.sleep(2)  # longer than the watcher's wait: stopped is stopped
    with pytest.raises(redis.ConnectionError):
        client.ping()
    plain = LocalRedis.ensure(f"redis://127.0.0.1:{(port2 := free_port())}/0")
    try:
        os.kill(plain.proc.pid, signal.SIGKILL)
        plain.proc.wait()
        time.sleep(2)
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=port2, socket_connect_timeout=0.5).ping()
    finally:
        plain.stop()
