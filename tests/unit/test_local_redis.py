"""`owc serve`'s local tenancy store: started when the config's Redis on this host is not
listening, reused when it is, stopped with the cluster; other hosts are left alone."""

from __future__ import annotations

import pytest
import redis

from cluster.process import free_port
from cluster.tenancy.local_redis import LocalRedis, local_address

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
