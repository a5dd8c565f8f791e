"""LoRA-aware routing, table-driven: vLLM's `vllm:lora_requests_info` parsed from real
metrics text, the lora_affinity scorer's tiers, the affinity policy's order for adapter
requests, this gateway's own in-flight adapters between scrapes, and what each adapter
request found (owc_adapter_requests_total).

The metrics texts in tests/unit/data/vllm_lora_metrics_*.prom are real vLLM 0.32 (CPU)
/metrics answers of the tiny demo Llama with two trained adapters a and b (histogram
buckets dropped): max_loras 1 before any LoRA request, with 6 requests of a running and
6 of b queued behind them, idle after a burst of b; max_loras 2 with a and b running."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cluster.config.loader import parse_config
from cluster.config.schema import RoutingConfig
from cluster.discovery.endpoints import Endpoint
from cluster.gateway.upstream.adapter_loader import record_adapter_requests
from cluster.routing import scorers as S
from cluster.routing.router import Router, Routing, adapter_found
from cluster.routing.stats import LoraInfo, StatsStore, lora_info, parse_vllm_metrics
from cluster.routing.types import ReplicaStats, ReplicaView, RequestInfo

DATA = Path(__file__).parent / "data"
A, B, C = (Endpoint("m", r, f"http://127.0.0.1:{p}") for r, p in (("a", 1), ("b", 2), ("c", 3)))
FR, DE = RequestInfo("m", adapter="fr"), RequestInfo("m", adapter="de")


def st(active=(), max_loras=None, adapters=("fr", "de"), running=0, waiting=0, resident=None):
    """Stats of a replica; its slots hold what it runs unless ``resident`` says more."""
    return ReplicaStats(running=running, waiting=waiting, adapters=frozenset(adapters),
                        active_adapters=frozenset(active), max_loras=max_loras,
                        resident_adapters=frozenset(active if resident is None else resident))


# --- vllm:lora_requests_info ---------------------------------------------------------------

@pytest.mark.parametrize("file, active, max_loras, resident, running, waiting", [
    # the family is declared, no series yet: nothing in use, max_loras unknown
    ("no_request_yet", set(), None, set(), 0, 0),
    # three series (b, idle, a): the latest is a's; b's queued requests are in no list yet
    ("max1_a_running_b_queued", {"a"}, 1, {"a"}, 6, 6),
    # the latest (empty labels) says nothing runs; b, used last, still holds the one slot
    ("max1_idle_after_b", set(), 1, {"b"}, 0, 0),
    ("max2_a_and_b", {"a", "b"}, 2, {"a", "b"}, 12, 0),
])
def test_lora_requests_info_from_real_vllm_metrics(file, active, max_loras, resident, running, waiting):
    s = parse_vllm_metrics((DATA / f"vllm_lora_metrics_{file}.prom").read_text(), ["a", "b"])
    assert (s.active_adapters, s.max_loras, s.resident_adapters, s.running, s.waiting) == \
        (active, max_loras, resident, running, waiting)
    assert s.adapters == {"a", "b"}  # registered: from /v1/models, unchanged


class _Sample:
    def __init__(self, value, **labels):
        self.value, self.labels = value, labels


def _info(active=(), max_loras=None, resident=()):
    return LoraInfo(frozenset(active), max_loras, frozenset(resident))


@pytest.mark.parametrize("samples, expected", [
    ([], _info()),
    # the latest value (the time vLLM last set it) wins, wherever it is in the text
    ([_Sample(9.0, max_lora="4", running_lora_adapters="x", waiting_lora_adapters="w"),
      _Sample(5.0, max_lora="4", running_lora_adapters="x,y", waiting_lora_adapters="z")],
     _info({"x", "w"}, 4, {"x", "w", "y", "z"})),
    # the slots hold the max_loras adapters named last: y (t=7) and z (t=6); x (t=3) was evicted
    ([_Sample(3.0, max_lora="2", running_lora_adapters="x", waiting_lora_adapters=""),
      _Sample(6.0, max_lora="2", running_lora_adapters="z", waiting_lora_adapters=""),
      _Sample(7.0, max_lora="2", running_lora_adapters="y", waiting_lora_adapters="y"),
      _Sample(8.0, max_lora="2", running_lora_adapters="", waiting_lora_adapters="")],
     _info(set(), 2, {"y", "z"})),
    ([_Sample(1.0, max_lora="", running_lora_adapters="", waiting_lora_adapters="")], _info()),
    ([_Sample(1.0)], _info()),  # labels missing altogether
])
def test_lora_info_takes_the_latest_series(samples, expected):
    assert lora_info(samples) == expected


def test_stats_without_the_lora_family_know_nothing_of_slots():
    text = (DATA / "vllm_lora_metrics_no_request_yet.prom").read_text()
    plain = "\n".join(line for line in text.splitlines() if "lora_requests_info" not in line) + "\n"
    s = parse_vllm_metrics(plain)
    assert s.active_adapters == frozenset() and s.max_loras is None


# --- the scorer ------------------------------------------------------------------------------

@pytest.mark.parametrize("views, req, expected", [
    # running fr; an empty slot; the only slot in use by de
    ([ReplicaView(A, stats=st(["fr"], 1)), ReplicaView(B, stats=st([], 1)), ReplicaView(C, stats=st(["de"], 1))],
     FR, [1.0, 0.9, 0.0]),
    # idle: fr still in the slot; the slot held by an idle de (fr would evict it); empty
    ([ReplicaView(A, stats=st([], 1, resident=["fr"])), ReplicaView(B, stats=st([], 1, resident=["de"])),
      ReplicaView(C, stats=st([], 1))], FR, [1.0, 0.45, 0.9]),
    # max_loras 2: one other adapter in use leaves a slot, two fill them
    ([ReplicaView(A, stats=st(["de"], 2)), ReplicaView(B, stats=st(["de", "es"], 2))], FR, [0.9, 0.0]),
    ([ReplicaView(A, stats=st(["de"], 2, resident=["de", "es"])), ReplicaView(B, stats=st(["de"], 2, resident=["de", "fr"]))],
     FR, [0.45, 1.0]),
    # this gateway's own requests since the last scrape count as running there
    ([ReplicaView(A, stats=st([], 1), adapters_in_flight=frozenset({"de"})), ReplicaView(B, stats=st([], 1))],
     FR, [0.0, 0.9]),
    ([ReplicaView(A, stats=st([], 1), adapters_in_flight=frozenset({"fr"})), ReplicaView(B, stats=st([], 1))],
     FR, [1.0, 0.9]),
    # ... even over an idle slot that still holds the request's adapter: de takes it
    ([ReplicaView(A, stats=st([], 1, resident=["fr"]), adapters_in_flight=frozenset({"de"}))], FR, [0.0]),
    # max_loras unknown (no LoRA request yet, stale stats): read as one slot
    ([ReplicaView(A, stats=st(["de"])), ReplicaView(B), ReplicaView(C, adapters_in_flight=frozenset({"de"}))],
     FR, [0.0, 0.9, 0.0]),
    # registered or not, the slots decide (the adapter_loaded filter prefers registered ones)
    ([ReplicaView(A, stats=st([], 1, adapters=())), ReplicaView(B, stats=st([], 1))], FR, [0.9, 0.9]),
    # no adapter: neutral
    ([ReplicaView(A, stats=st(["fr"], 1)), ReplicaView(B, stats=st(["de"], 1))], RequestInfo("m"), [0.0, 0.0]),
])
def test_lora_affinity_scores(views, req, expected):
    assert S.lora_affinity(views, req) == expected


# --- the policies -----------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["affinity", "lora_affinity"])
@pytest.mark.parametrize("a, b", [
    (st(["de"], 1), st(["fr"], 1, running=6)),             # in use by another adapter / running it
    (st(["de"], 1), st([], 1, running=6)),                 # in use by another adapter / empty
    (st([], 1, resident=["de"]), st([], 1, resident=["fr"], running=6)),  # both idle: each holds its own
    (st([], 1, resident=["de"]), st([], 1)),               # evicts an idle adapter / empty
    (st(["de", "es"], 2), st(["de"], 2, resident=["de", "fr"], running=6)),
])
def test_an_adapter_request_goes_where_it_joins_a_batch_without_a_swap(policy, a, b):
    r = Router(RoutingConfig(policy=policy).spec())
    for i in range(20):  # whatever the session and prefix homes, and a lighter load on a
        req = RequestInfo("m", adapter="fr", session_key=f"user-{i}", prefix_key=f"doc {i}".encode())
        assert r.pick([ReplicaView(A, stats=a), ReplicaView(B, stats=b)], req).replica_id == "b"


def test_affinity_policy_keeps_session_homes_where_a_slot_is_free():
    """Running the adapter beats a free slot by less than a session home: the session's home
    keeps it when that home has room for the adapter; a request without an adapter is as before."""
    r = Router(RoutingConfig().spec())
    moved = 0
    for i in range(20):
        req = RequestInfo("m", adapter="fr", session_key=f"user-{i}")
        views = [ReplicaView(A, stats=st(["fr"], 2)), ReplicaView(B, stats=st([], 2))]
        home = [v.replica_id for v in views][S.session_affinity(views, req).index(1.0)]
        assert r.pick(views, req).replica_id == home
        moved += home == "b"
        base = RequestInfo("m", session_key=f"user-{i}")
        assert r.pick([ReplicaView(A, stats=st(["de"], 1)), ReplicaView(B, stats=st(["fr"], 1))], base).replica_id \
            == home
    assert 0 < moved < 20


def test_least_load_breaks_ties_between_replicas_running_the_adapter():
    r = Router(RoutingConfig(policy="lora_affinity").spec())
    views = [ReplicaView(A, stats=st(["fr"], 1, running=5)), ReplicaView(B, stats=st(["fr"], 1, running=1)),
             ReplicaView(C, stats=st(["de"], 1))]
    assert r.pick(views, FR).replica_id == "b"


# --- this gateway's requests between scrapes -------------------------------------------------

def _routing(policy="affinity", now=None):
    store = StatsStore(stale_after_s=2)
    clock = (lambda: now[0]) if now is not None else (lambda: 0.0)
    return Routing.build({"m": RoutingConfig(policy=policy).spec()}, stats=store, clock=clock)


def test_two_adapters_split_over_two_idle_replicas_before_any_scrape_shows_them():
    routing = _routing()
    for rid in ("a", "b"):
        routing.stats.update(rid, st([], 1), now=0.0)  # idle, max_loras 1, both registered
    sent = {}
    for i in range(12):  # interleaved, none finished yet, stats unchanged (max_loras 1, both idle)
        req = RequestInfo("m", adapter=("fr", "de")[i % 2], prefix_key=f"q{i}".encode())
        ep = routing.choose([A, B], req)
        routing.acquire(ep.replica_id, req.adapter)  # as the forwarder does
        sent.setdefault(req.adapter, set()).add(ep.replica_id)
    assert sorted(map(len, sent.values())) == [1, 1] and sent["fr"] != sent["de"]
    assert routing.in_flight("a") == routing.in_flight("b") == 6
    assert {routing.adapters_in_flight("a"), routing.adapters_in_flight("b")} == {frozenset({"fr"}), frozenset({"de"})}


@pytest.mark.parametrize("calls, in_flight, adapters", [
    # the adapter given with each acquire and release (the base model is None)
    ([("acquire", "a", "fr"), ("acquire", "a", None), ("release", "a", None)], 1, {"fr"}),
    ([("acquire", "a", "fr"), ("acquire", "a", "fr"), ("release", "a", "fr")], 1, {"fr"}),
    ([("acquire", "a", "fr"), ("acquire", "a", "de"), ("release", "a", "fr")], 1, {"de"}),
    ([("acquire", "a", "fr"), ("release", "a", "fr"), ("release", "a", "fr")], 0, set()),  # never below zero
    # a decision takes nothing by itself
    ([("choose", "fr"), ("acquire", "a")], 1, set()),
])
def test_in_flight_per_adapter(calls, in_flight, adapters):
    routing = _routing("round_robin")
    for call in calls:
        if call[0] == "choose":
            assert routing.choose([A], RequestInfo("m", adapter=call[1])).replica_id == "a"
        elif len(call) == 1:
            getattr(routing, call[0])("a")
        elif len(call) == 2:
            getattr(routing, call[0])(call[1])
        else:
            getattr(routing, call[0])(call[1], call[2])
    assert routing.in_flight("a") == in_flight and routing.adapters_in_flight("a") == adapters


# --- what each adapter request found -------------------------------------------------------

@pytest.mark.parametrize("view, found", [
    (ReplicaView(A, stats=st(["fr"], 1)), "active"),
    (ReplicaView(A, stats=st([], 1, resident=["fr"])), "resident"),
    (ReplicaView(A, stats=st([], 1), adapters_in_flight=frozenset({"fr"})), "active"),
    (ReplicaView(A, adapters_in_flight=frozenset({"fr"})), "active"),
    (ReplicaView(A, stats=st(["de"], 1)), "registered"),
    (ReplicaView(A, stats=st([], 1, adapters=("de",))), "loaded_on_demand"),
    (ReplicaView(A), "unknown"),
])
def test_adapter_found(view, found):
    assert adapter_found(view, "fr") == found


def test_owc_adapter_requests_total_counts_each_decision():
    cfg = parse_config({"models": {"m": {"source": "external", "adapters": {"fr": {}, "de": {}}}},
                        "gateway": {"api_keys_env": None}})
    registry = CollectorRegistry()
    routing = _routing()
    record_adapter_requests(registry, routing, cfg)

    def count(found, adapter="fr"):
        return registry.get_sample_value("owc_adapter_requests_total", {"model": "m", "adapter": adapter,
                                                                        "found": found})

    assert count("active", "de") == 0  # declared adapters start at 0
    routing.stats.update("a", st([], 1), now=0.0)
    routing.stats.update("b", st([], 1), now=0.0)
    for _ in range(3):
        routing.acquire(routing.choose([A, B], FR).replica_id, FR.adapter)
    routing.choose([A, B], RequestInfo("m"))  # no adapter: not counted
    assert [count(f) for f in ("active", "resident", "registered", "loaded_on_demand", "unknown")] == [2, 0, 1, 0, 0]
