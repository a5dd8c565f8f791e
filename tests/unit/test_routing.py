"""Routing plugins, table-driven: views with given stats in, expected choice out."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from pydantic import ValidationError

from cluster.config.schema import RoutingConfig
from cluster.discovery.sources import FileEndpoints, StaticEndpoints, write_endpoints_file
from cluster.routing import filters as F
from cluster.routing import scorers as S
from cluster.discovery.endpoints import Endpoint, EndpointTable
from cluster.routing.hashing import bounded_home, load_bound, ranking
from cluster.routing.keys import canonical_prompt, prefix_key, session_key
from cluster.routing.pickers import MaxScore, PowerOfTwo, Random, RoundRobin
from cluster.routing.router import NoReplica, Router, Routing
from cluster.routing.stats import StatsStore, lora_adapters, parse_vllm_metrics
from cluster.routing.types import ReplicaStats, ReplicaView, RequestInfo

A, B, C = (Endpoint("m", r, f"http://127.0.0.1:{p}") for r, p in (("a", 1), ("b", 2), ("c", 3)))
D = Endpoint("m", "d", "http://127.0.0.1:4", draining=True)
REQ = RequestInfo(model="m")


def st(waiting=0, running=0, kv=0.0, adapters=()):
    return ReplicaStats(waiting=waiting, running=running, kv_usage=kv, adapters=frozenset(adapters))


def ids(views):
    return [v.replica_id for v in views]


# --- views ---------------------------------------------------------------------------

@pytest.mark.parametrize("view, load, queue", [
    (ReplicaView(A, in_flight=3), 3, None),                              # stale stats: own view only
    (ReplicaView(A, in_flight=1, stats=st(waiting=2, running=4)), 6, 2),  # engine sees all gateways
    # sent since the last scrape: load, not queue (mostly running by now; the fair queue bounds it)
    (ReplicaView(A, in_flight=9, stats=st(waiting=0, running=4)), 9, 0),
])
def test_view_load_and_queue(view, load, queue):
    assert view.load == load and view.queue == queue


# --- filters -------------------------------------------------------------------------

@pytest.mark.parametrize("flt, views, req, expected", [
    (F.healthy, [ReplicaView(A, healthy=False), ReplicaView(B)], REQ, ["b"]),
    (F.healthy, [ReplicaView(A, healthy=False)], REQ, []),
    (F.not_draining, [ReplicaView(D), ReplicaView(A)], REQ, ["a"]),
    (F.adapter_loaded, [ReplicaView(A, stats=st(adapters=["fr"])), ReplicaView(B, stats=st())],
     RequestInfo("m", adapter="fr"), ["a"]),
    # nobody has it (or stats unknown): everyone may load it
    (F.adapter_loaded, [ReplicaView(A, stats=st()), ReplicaView(B)], RequestInfo("m", adapter="fr"), ["a", "b"]),
    (F.adapter_loaded, [ReplicaView(A, stats=st())], REQ, ["a"]),
    (F.queue_bound(4), [ReplicaView(A, stats=st(waiting=4)), ReplicaView(B, stats=st(waiting=3))], REQ, ["b"]),
    (F.queue_bound(4), [ReplicaView(A, stats=st(waiting=9)), ReplicaView(B)], REQ, ["b"]),  # unknown passes
    (F.queue_bound(4), [], REQ, []),
    # the engine's own queue, not this gateway's in-flight beyond what it ran at the last scrape
    # (a burst sent since is mostly running by now): 1,000 in flight with an empty queue pass
    (F.queue_bound(4), [ReplicaView(A, in_flight=1000, stats=st(running=1, waiting=0))], REQ, ["a"]),
])
def test_filters(flt, views, req, expected):
    assert ids(flt(views, req)) == expected


def test_queue_bound_refuses_when_every_replica_is_full():
    with pytest.raises(F.QueueFull):
        F.queue_bound(2)([ReplicaView(A, stats=st(waiting=2)), ReplicaView(B, in_flight=5, stats=st(running=1, waiting=3))],
                         REQ)


# --- scorers -------------------------------------------------------------------------

@pytest.mark.parametrize("scorer, views, req, expected", [
    (S.least_load, [ReplicaView(A, in_flight=0), ReplicaView(B, in_flight=3)], REQ, [1.0, 0.25]),
    (S.least_load, [ReplicaView(A, stats=st(waiting=1, running=1)), ReplicaView(B, stats=st())], REQ, [1 / 3, 1.0]),
    (S.kv_cache, [ReplicaView(A, stats=st(kv=0.8)), ReplicaView(B)], REQ, [pytest.approx(0.2), 0.5]),
    # registered is not running: both have a free adapter slot (tests/unit/test_lora_routing.py)
    (S.lora_affinity, [ReplicaView(A, stats=st(adapters=["fr"])), ReplicaView(B, stats=st())],
     RequestInfo("m", adapter="fr"), [0.9, 0.9]),
    (S.lora_affinity, [ReplicaView(A, stats=st(adapters=["fr"]))], REQ, [0.0]),
    (S.session_affinity, [ReplicaView(A), ReplicaView(B)], REQ, [0.0, 0.0]),  # no session: neutral
])
def test_scorers(scorer, views, req, expected):
    assert scorer(views, req) == expected


def test_session_affinity_home_and_failover():
    views = [ReplicaView(A), ReplicaView(B), ReplicaView(C)]
    homes = {}
    for i in range(30):
        req = RequestInfo("m", session_key=f"user-{i}")
        scores = S.session_affinity(views, req)
        assert sorted(scores) == [0.0, 0.0, 1.0]
        homes[i] = views[scores.index(1.0)].replica_id
        # the same session always lands on its home …
        assert S.session_affinity(list(reversed(views)), req)[::-1] == scores
        # … and fails over to its next choice when the home is gone
        rest = [v for v in views if v.replica_id != homes[i]]
        second = ranking(req.session_key.encode(), ["a", "b", "c"])[1]
        assert rest[S.session_affinity(rest, req).index(1.0)].replica_id == "abc"[second]
    assert len(set(homes.values())) == 3


def test_prefix_affinity_home_then_spill_over():
    key = b"the shared manual"
    scorer = S.prefix_affinity(bounded_load=1.25)
    idle = [ReplicaView(A), ReplicaView(B), ReplicaView(C)]
    home = ids(idle)[S.prefix_affinity(2.0)(idle, RequestInfo("m", prefix_key=key)).index(1.0)]
    assert home == "abc"[ranking(key, ["a", "b", "c"])[0]]
    # one more request above the mean is fine …
    near = [ReplicaView(e, in_flight=1 if e.replica_id == home else 0) for e in (A, B, C)]
    assert ids(near)[scorer(near, RequestInfo("m", prefix_key=key)).index(1.0)] == home
    # … far more than the mean: the key's second choice takes the request
    busy = [ReplicaView(e, in_flight=8 if e.replica_id == home else 0) for e in (A, B, C)]
    spill = ids(busy)[scorer(busy, RequestInfo("m", prefix_key=key)).index(1.0)]
    assert spill == "abc"[ranking(key, ["a", "b", "c"])[1]]
    assert scorer(idle, RequestInfo("m")) == [0.0, 0.0, 0.0]  # no prompt: neutral


# --- pickers -------------------------------------------------------------------------

@pytest.mark.parametrize("views, scores, expected", [
    ([ReplicaView(A), ReplicaView(B)], [0.2, 0.9], "b"),
    ([ReplicaView(A, in_flight=2), ReplicaView(B, in_flight=1)], [0.5, 0.5], "b"),  # tie: lower load
])
def test_max_score(views, scores, expected):
    assert views[MaxScore()(views, scores)].replica_id == expected


def test_max_score_exact_ties_rotate():
    p, views = MaxScore(), [ReplicaView(A), ReplicaView(B), ReplicaView(C)]
    assert {views[p(views, [1, 1, 1])].replica_id for _ in range(3)} == {"a", "b", "c"}


def test_round_robin_cycles_by_replica_id_across_set_changes():
    p = RoundRobin()
    views = [ReplicaView(C), ReplicaView(A), ReplicaView(B)]
    assert [views[p(views, [0, 0, 0])].replica_id for _ in range(4)] == ["a", "b", "c", "a"]
    two = [ReplicaView(A), ReplicaView(C)]  # b left: the turn goes on from a
    assert two[p(two, [0, 0])].replica_id == "c"


def test_power_of_two_takes_the_better_of_two_random_candidates():
    views = [ReplicaView(A), ReplicaView(B), ReplicaView(C)]
    p = PowerOfTwo(random.Random(7))
    picks = Counter(views[p(views, [0.1, 0.5, 0.9])].replica_id for _ in range(3000))
    # the worst is never chosen (it always loses its pair); the best wins 2 of 3 pairs
    assert picks["a"] == 0 and 0.6 < picks["c"] / 3000 < 0.73
    assert PowerOfTwo()([ReplicaView(A)], [0.0]) == 0
    assert Random(random.Random(3))(views, [0, 0, 0]) in (0, 1, 2)


# --- bounded-load consistent hashing ---------------------------------------------------

def test_hashing_spreads_keys_evenly():
    reps = ["r0", "r1", "r2", "r3"]
    homes = Counter(reps[ranking(f"doc-{i}".encode(), reps)[0]] for i in range(8000))
    assert all(1800 < n < 2200 for n in homes.values()), homes


def test_joining_or_leaving_replica_moves_only_its_share():
    keys = [f"doc-{i}".encode() for i in range(6000)]
    four, five = ["r0", "r1", "r2", "r3"], ["r0", "r1", "r2", "r3", "r4"]
    before = {k: four[ranking(k, four)[0]] for k in keys}
    after = {k: five[ranking(k, five)[0]] for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "r4" for k in moved)  # only onto the new replica
    assert 0.16 < len(moved) / len(keys) < 0.24  # ~1/5
    three = ["r0", "r1", "r3"]  # r2 leaves: only its keys move
    gone = {k: three[ranking(k, three)[0]] for k in keys}
    assert all(gone[k] == before[k] for k in keys if before[k] != "r2")


@pytest.mark.parametrize("loads, factor, bound", [
    ([0, 0, 0, 0], 1.25, 2), ([4, 4, 0, 0], 1.25, 4), ([10, 0], 1.5, 9), ([40, 40, 40, 0], 1.25, 38),
])
def test_load_bound(loads, factor, bound):
    assert load_bound(loads, factor) == bound


def test_bounded_load_keeps_a_hot_key_under_the_bound():
    """One hot prefix: every request keeps its home until the home reaches the bound, then
    spills to the key's next choice, so no replica exceeds factor x mean."""
    reps, loads = ["a", "b", "c", "d"], [0, 0, 0, 0]
    order = ranking(b"hot", reps)
    for _ in range(40):
        loads[bounded_home(b"hot", reps, loads, 1.25)] += 1
        assert max(loads) <= load_bound([x for x in loads], 1.25)
    assert loads[order[0]] == max(loads) and min(loads) > 0


def test_two_routers_with_different_histories_choose_the_same_home():
    cfg = RoutingConfig(policy="prefix_affinity")
    r1, r2 = Router(cfg.spec()), Router(cfg.spec(), rng=random.Random(99))
    views = [ReplicaView(A), ReplicaView(B), ReplicaView(C)]
    for i in range(50):  # r1 has seen other traffic (its tie-break turn and stats moved on)
        r1.pick(views, RequestInfo("m", prefix_key=f"other-{i}".encode()))
    for i in range(100):
        req = RequestInfo("m", prefix_key=f"document {i}".encode())
        assert r1.pick(views, req).replica_id == r2.pick(views, req).replica_id


# --- the router ------------------------------------------------------------------------

def test_router_records_each_plugin_and_falls_back_to_load_blind():
    seen = []
    r = Router(RoutingConfig(policy="least_load").spec())
    views = [ReplicaView(A, in_flight=5), ReplicaView(B, in_flight=0)]  # no stats at all
    assert r.pick(views, REQ, seen).replica_id in ("a", "b")
    assert [p for p, _ in seen] == r.plugins and all(s >= 0 for _, s in seen)
    assert r.plugins == ["filter:healthy", "filter:not_draining", "filter:adapter_loaded", "filter:queue_bound",
                         "scorer:least_load", "scorer:kv_cache", "picker:p2c"]


@pytest.mark.parametrize("policy, views, req, expected", [
    ("round_robin", [ReplicaView(A, healthy=False), ReplicaView(B)], REQ, "b"),
    ("least_load", [ReplicaView(A, stats=st(running=6)), ReplicaView(B, stats=st(running=1))], REQ, "b"),
    ("lora_affinity", [ReplicaView(A, stats=st()), ReplicaView(B, stats=st(running=3, adapters=["fr"]))],
     RequestInfo("m", adapter="fr"), "b"),
    ("affinity", [ReplicaView(D), ReplicaView(A, stats=st(running=9))], REQ, "a"),
])
def test_policies(policy, views, req, expected):
    assert Router(RoutingConfig(policy=policy).spec()).pick(views, req).replica_id == expected


def test_affinity_policy_tiers():
    """Session beats prefix, prefix beats load."""
    r = Router(RoutingConfig().spec())
    views = [ReplicaView(A, stats=st()), ReplicaView(B, stats=st()), ReplicaView(C, stats=st())]
    req = RequestInfo("m", prefix_key=b"doc", session_key="s1")
    s_home = ids(views)[S.session_affinity(views, req).index(1.0)]
    assert r.pick(views, req).replica_id == s_home
    p_req = RequestInfo("m", prefix_key=b"doc")
    p_home = ids(views)[S.prefix_affinity(2.0)(views, p_req).index(1.0)]
    loaded = [ReplicaView(v.endpoint, stats=st(running=1 if v.replica_id == p_home else 0)) for v in views]
    assert r.pick(loaded, p_req).replica_id == p_home


def test_routing_marks_failures_and_raises_when_nothing_is_left():
    now = [0.0]
    store = StatsStore(stale_after_s=2, retry_after_s=10)
    routing = Routing.build({"m": RoutingConfig(policy="round_robin").spec()}, stats=store, clock=lambda: now[0])
    routing.failed("a")
    assert routing.choose([A, B], REQ).replica_id == "b"
    with pytest.raises(NoReplica):
        routing.choose([A, B], REQ, exclude=frozenset({"b"}))
    now[0] = 11  # probation: back in after retry_after_s without a scrape
    assert routing.choose([A], REQ).replica_id == "a"


def test_routing_config_overrides_and_rejects_unknown_plugins():
    cfg = RoutingConfig(policy="least_load", scorers={"prefix_affinity": 1.0})
    assert cfg.label == "custom" and cfg.spec().scorers == {"prefix_affinity": 1.0}
    assert RoutingConfig().label == "affinity"
    # the prompt's prefix key is rendered only for routers that score it
    assert [Router(RoutingConfig(policy=p).spec()).uses_prefix for p in ("affinity", "prefix_affinity", "least_load",
                                                                     "round_robin", "session_affinity")] == \
        [True, True, False, False, False]
    for bad in ({"scorers": {"nope": 1}}, {"filters": ["nope"]}, {"picker": "nope"}, {"policy": "nope"},
                {"scorers": {"least_load": -1}}, {"params": {"prefix_affinity": {"bounded_load": 1.0}}},
                {"params": {"nope": {}}}, {"params": {"queue_bound": {"bounded_load": 2}}}):
        with pytest.raises(ValidationError):
            RoutingConfig(**bad)


# --- keys --------------------------------------------------------------------------------

def test_prefix_key_canonical_rendering():
    doc = "A long manual. " * 100
    a = {"messages": [{"role": "system", "content": doc}, {"role": "user", "content": "Q1?"}]}
    b = {"messages": [{"role": "system", "content": doc}, {"role": "user", "content": "Q2?"}]}
    assert prefix_key(a, 1024) == prefix_key(b, 1024) and len(prefix_key(a, 1024)) == 1024
    assert prefix_key(a, 4096) != prefix_key(b, 4096)  # the question is within the key
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert canonical_prompt(parts, 100) == canonical_prompt({"messages": [{"role": "user", "content": "hi"}]}, 100)
    assert canonical_prompt({"prompt": "hello world"}, 5) == "hello"
    assert canonical_prompt({"prompt": [[1, 2, 3]]}, 100) == "1,2,3"
    assert canonical_prompt({}, 100) == ""


@pytest.mark.parametrize("headers, data, expected", [
    ({b"x-session-id": b"s-1"}, {"user": "u"}, "s-1"),
    ({}, {"user": "u"}, "u"),
    ({}, {"user": ""}, None),
    ({}, {}, None),
])
def test_session_key(headers, data, expected):
    assert session_key(headers, data) == expected


# --- stats ---------------------------------------------------------------------------

VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny-llama"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny-llama"} 5.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny-llama"} 0.25
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="tiny-llama"} 512.0
"""


def test_parse_vllm_metrics():
    assert parse_vllm_metrics(VLLM_METRICS, ["fr"]) == st(waiting=5, running=3, kv=0.25, adapters=["fr"])
    with pytest.raises(ValueError):
        parse_vllm_metrics("# nothing here\n")
    models = {"data": [{"id": "tiny-llama", "parent": None}, {"id": "fr", "parent": "tiny-llama"}]}
    assert lora_adapters(models) == {"fr"}


def test_stats_store_staleness_and_health():
    s = StatsStore(stale_after_s=2, retry_after_s=10)
    s.update("a", st(running=1), now=0)
    assert s.stats("a", 1.5) == st(running=1) and s.stats("a", 2.5) is None  # stale -> load-blind
    s.failed("a", now=3)
    assert not s.healthy("a", 4) and s.healthy("a", 13)
    s.update("a", st(), now=5)
    assert s.healthy("a", 5)
    s.forget(["b"])
    assert s.stats("a", 5) is None and s.healthy("zz", 0)


# --- endpoints -----------------------------------------------------------------------

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
    write_endpoints_file(path, [A, D])
    src.reload()
    assert src.endpoints("m") == [A, D] and src.endpoints("m")[1].draining
    write_endpoints_file(path, [Endpoint("other", "x", "http://h:9")])
    src.reload()
    assert src.endpoints("m") == [] and src.endpoints("other")[0].replica_id == "x"
    assert json.loads(open(path).read())[0]["model"] == "other"
