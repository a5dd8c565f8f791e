import json

import pytest

from cluster.gateway.discovery import FileEndpoints, StaticEndpoints, write_endpoints_file
from cluster.routing.endpoints import Endpoint, EndpointTable
from cluster.routing.picker import LeastInFlightPicker, ReplicaView

A, B, C = (Endpoint("m", r, f"http://127.0.0.1:{p}") for r, p in (("a", 1), ("b", 2), ("c", 3)))


@pytest.mark.parametrize(
    "views, exclude, expected",
    [
        ([], frozenset(), None),
        ([ReplicaView(A, 3), ReplicaView(B, 1), ReplicaView(C, 2)], frozenset(), {"b"}),
        ([ReplicaView(A, 0, healthy=False), ReplicaView(B, 5)], frozenset(), {"b"}),
        ([ReplicaView(A, 0), ReplicaView(B, 5)], frozenset({"a"}), {"b"}),
        ([ReplicaView(A, 0)], frozenset({"a"}), None),
        ([ReplicaView(A, 1), ReplicaView(B, 1)], frozenset(), {"a", "b"}),
    ],
)
def test_least_in_flight(views, exclude, expected):
    got = LeastInFlightPicker().pick(views, exclude)
    assert (got is None) if expected is None else (got.replica_id in expected)


def test_ties_rotate():
    picker = LeastInFlightPicker()
    views = [ReplicaView(A, 0), ReplicaView(B, 0), ReplicaView(C, 0)]
    assert {picker.pick(views).replica_id for _ in range(3)} == {"a", "b", "c"}


def test_endpoint_table_ttl_heartbeat_deregister():
    t = EndpointTable(ttl_s=10)
    t.register(A, now=0)
    t.register(B, now=0)
    assert t.snapshot(now=5) == [A, B]
    assert t.heartbeat("m", "a", now=8) and not t.heartbeat("m", "zz", now=8)
    assert t.snapshot(now=15) == [A]  # b expired, a refreshed at 8
    t.deregister("m", "a")
    assert t.snapshot(now=15) == []


def test_static_endpoints():
    s = StaticEndpoints({"m": ["http://h:1/", "http://h:2"]})
    assert [e.url for e in s.endpoints("m")] == ["http://h:1", "http://h:2"] and s.endpoints("x") == []


def test_file_endpoints_reload_on_change(tmp_path):
    path = str(tmp_path / "eps.json")
    src = FileEndpoints(path)
    src.reload()
    assert src.endpoints("m") == []
    write_endpoints_file(path, [A, B])
    src.reload()
    assert src.endpoints("m") == [A, B]
    write_endpoints_file(path, [Endpoint("other", "x", "http://h:9")])
    src.reload()
    assert src.endpoints("m") == [] and src.endpoints("other")[0].replica_id == "x"
    assert json.loads(open(path).read())[0]["model"] == "other"
