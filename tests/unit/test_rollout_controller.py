"""`owc controller`'s rollout analysis on Kubernetes (issue 30, must-show 6): two controllers
over the in-test API server of the capacity tests (Lease, RayService, and the rollouts
ConfigMap through the real `kubernetes` client) and a fake Prometheus answering the
analysis's PromQL over HTTP. The leader is stopped mid-step; the follower takes the Lease
and goes on with the same step, from the same window start, never skipping one."""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse

import httpx
import pytest
import yaml
from kubernetes import client
from prometheus_client import CollectorRegistry

from cluster.capacity.actuators import KubernetesActuator, LeaseElector
from cluster.capacity.controller import CapacityController
from cluster.capacity.rollout import RolloutState
from cluster.capacity.signals import PrometheusSignals
from cluster.config.loader import parse_config
from cluster.discovery.rollout_configmap import ConfigMapRollouts, key_of
from cluster.rollouts.leader import LeaderRollouts, configmap_name
from cluster.rollouts.prometheus import PrometheusWindows, window_queries
from tests.unit.test_capacity_kubernetes import NAME, NS, FakeApi

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
OWC = {"models": {"tiny": {
    "source": "demo:tiny-llama", "candidate": {"engine_kwargs": {"max_num_seqs": 8}},
    "rollout": {"steps": [20, 50], "step_s": 60, "conformance": False, "gates": {"min_requests": 5}},
}}}


class FakePrometheus:
    """Answers /api/v1/query for the window queries: each version served ``rate`` requests a
    second over the range asked (no 5xx), TTFT p95 0.1 s and ITL p95 0.02 s; every range asked
    is kept. ``up`` False: no series at all."""

    def __init__(self):
        self.ranges: list[int] = []
        self.up = True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        q = urllib.parse.parse_qs(request.url.query.decode())["query"][0]
        seconds = int(re.search(r"\[(\d+)s\]", q).group(1))
        self.ranges.append(seconds)
        value = None
        if self.up and 'code=~"5.."' not in q:
            value = 0.1 if "time_to_first" in q else 0.02 if "inter_token" in q else 2.0 * seconds
        result = [] if value is None else [{"metric": {}, "value": [0, str(value)]}]
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": result}})


class Pod:
    """One `owc controller` pod: its capacity controller (which holds the Lease) and rollouts."""

    def __init__(self, api: FakeApi, who: str, now: list[float], prom: FakePrometheus, *, config=None, **gate):
        """``gate``: LeaderRollouts' conformance gate (``engines``, ``compare``; test_rollout_gate)."""
        c = client.ApiClient(client.Configuration(host=api.url))
        cfg = config or parse_config(OWC)
        self.elector = LeaseElector(api=client.CoordinationV1Api(c), namespace=NS, name="owc-controller",
                                    identity=who, duration_s=15, renew_interval_s=5,
                                    clock=lambda: T0 + dt.timedelta(seconds=now[0]))
        actuator = KubernetesActuator(api=client.CustomObjectsApi(c), namespace=NS, name=NAME)
        self.capacity = CapacityController(config=cfg, signals=None, actuator=actuator, registry=CollectorRegistry(),
                                           elector=self.elector, clock=lambda: now[0], targets=[], interval_s=5)
        store = ConfigMapRollouts(client.CoreV1Api(c), NS, configmap_name(NAME))
        signals = PrometheusSignals("http://prometheus:9090", client=httpx.Client(transport=httpx.MockTransport(prom)))
        self.rollouts = LeaderRollouts(cfg, store, prometheus=signals, elector=self.elector, scale=actuator.scale,
                                       clock=lambda: now[0], **gate)

    def round(self) -> bool:
        self.capacity.reconcile_once()  # renews (or takes) the Lease, as every round does
        return self.rollouts.tick()


@pytest.fixture
def api():
    a = FakeApi(OWC)
    yield a
    a.server.shutdown()


def state(api: FakeApi) -> RolloutState | None:
    cm = api.objects.get(f"/api/v1/namespaces/{NS}/configmaps/{configmap_name(NAME)}")
    raw = cm and cm["data"].get(key_of("tiny"))
    return RolloutState.from_dict(yaml.safe_load(raw)) if raw else None


def test_the_leader_stopped_mid_step_the_follower_goes_on_with_that_step(api):
    now, prom = [0.0], FakePrometheus()
    a, b = Pod(api, "pod-a", now, prom), Pod(api, "pod-b", now, prom)
    seen: list[tuple[str, int]] = []

    def both(*pods: Pod) -> list[bool]:
        out = [p.round() for p in pods]
        st = state(api)
        if st is not None and (not seen or seen[-1] != (st.state, st.step)):
            seen.append((st.state, st.step))
        return out

    assert both(a, b) == [True, False]  # a leads; b, the follower, writes nothing
    assert (state(api).state, state(api).step, state(api).weight, state(api).window_start) == ("analysing", 0, 20, 0.0)
    for t in (5, 10, 15, 20, 25, 30):  # mid-step: 30 s of the 60-s window
        now[0] = t
        assert both(a, b) == [True, False]
    assert state(api).step == 0
    # a is killed at 30 s: its Lease (renewed at 30, 15 s long) lapses at 45
    for t in (35, 40, 45):
        now[0] = t
        assert both(b) == [False]
    rv = api.objects[f"/api/v1/namespaces/{NS}/configmaps/{configmap_name(NAME)}"]["metadata"]["resourceVersion"]
    now[0] = 50
    prom.ranges.clear()
    assert both(b) == [True]
    st = state(api)  # the same step, from the same window start: not restarted, not skipped
    assert (st.state, st.step, st.weight, st.window_start) == ("analysing", 0, 20, 0.0)
    assert set(prom.ranges) == {50}  # the window read from its start, 50 s ago
    now[0] = 60
    prom.ranges.clear()
    assert both(b) == [True]
    st = state(api)
    assert (st.state, st.step, st.weight, st.window_start) == ("analysing", 1, 50, 60.0)  # step 1 passed at 60 s
    assert set(prom.ranges) == {60}  # on the whole of step 1's window, half of it a's
    assert [g.passed for g in st.gates] == [True, True, True]
    # a comes back (it was paused, not dead): it finds b holding the Lease and writes nothing
    now[0] = 70
    rv = api.objects[f"/api/v1/namespaces/{NS}/configmaps/{configmap_name(NAME)}"]["metadata"]["resourceVersion"]
    assert a.round() is False
    assert api.objects[f"/api/v1/namespaces/{NS}/configmaps/{configmap_name(NAME)}"]["metadata"]["resourceVersion"] == rv
    for t in (75, 90, 105, 120):
        now[0] = t
        assert both(b, a) == [True, False]
    assert seen == [("analysing", 0), ("analysing", 1), ("promoted", 1)]  # every step, in order, none skipped
    assert state(api).weight == 100
    deps = yaml.safe_load(api.rayservice()["spec"]["serveConfigV2"])["applications"][0]["deployments"]
    assert deps == [{"name": "engine-tiny", "num_replicas": 1}]  # stable scaled down after the promotion
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load(api.rayservice()["spec"]["serveConfigV2"]))  # KubeRay can apply it


def test_a_new_leader_drains_what_its_predecessor_ended_but_did_not_drain(api):
    now, prom = [0.0], FakePrometheus()
    c = client.ApiClient(client.Configuration(host=api.url))
    store = ConfigMapRollouts(client.CoreV1Api(c), NS, configmap_name(NAME))
    store.write("tiny", {"model": "tiny", **RolloutState(state="rolled_back", weight=0, reason="x").to_dict()})
    b = Pod(api, "pod-b", now, prom)
    assert b.round() is True
    deps = yaml.safe_load(api.rayservice()["spec"]["serveConfigV2"])["applications"][0]["deployments"]
    assert deps == [{"name": "engine-tiny-candidate", "num_replicas": 1}]
    assert state(api).state == "rolled_back"


def test_operator_commands_reach_the_leader_through_the_configmap(api):
    now, prom = [0.0], FakePrometheus()
    a = Pod(api, "pod-a", now, prom)
    c = client.ApiClient(client.Configuration(host=api.url))
    gateway = ConfigMapRollouts(client.CoreV1Api(c), NS, configmap_name(NAME), max_age_s=0.25)
    assert a.round()
    cid = gateway.submit("tiny", "pause", "admin-1")
    assert gateway.take_answer(cid) is None  # nothing answers between ticks
    now[0] = 1
    assert a.round()
    answer = gateway.take_answer(cid)
    assert answer["state"]["state"] == "paused" and answer["state"]["reason"] == "paused by an operator"
    refused = gateway.submit("tiny", "pause")
    now[0] = 2
    a.round()
    assert "already paused by an operator" in gateway.take_answer(refused)["error"]
    assert gateway.pending() == [] and gateway.read("tiny")["state"] == "paused"


def test_no_series_in_prometheus_is_no_window_and_pauses_the_step(api):
    now, prom = [0.0], FakePrometheus()
    a = Pod(api, "pod-a", now, prom)
    prom.up = False
    assert a.round()
    now[0] = 61
    a.round()
    st = state(api)
    assert (st.state, st.paused_by) == ("paused", "no_data") and "no metrics" in st.reason


@pytest.mark.parametrize("model, key", [
    ("tiny", "state.tiny"),
    ("org/Model_v1:q4", "state.org_2FModel_5Fv1_3Aq4"),
    ("é", "state._C3_A9"),
])
def test_configmap_keys_are_valid_and_distinct(model, key):
    assert key_of(model) == key and re.fullmatch(r"[-._a-zA-Z0-9]+", key)


def test_window_queries_read_the_version_labelled_series_over_the_window():
    q = window_queries("tiny", "candidate", 42)
    assert q["requests"] == 'sum(increase(owc_requests_total{model="tiny",version="candidate"}[42s]))'
    assert 'code=~"5.."' in q["errors"] and "[42s]" in q["ttft_p95_s"] and "histogram_quantile(0.95" in q["itl_p95_s"]
    assert PrometheusWindows(None)("tiny", RolloutState(), 10.0) is None  # no window started: nothing to read


def test_gateway_processes_route_by_the_weight_the_leader_wrote(api, monkeypatch):
    from cluster.discovery import rollout_configmap
    from cluster.discovery.rollouts import RolloutFiles, rollout_store
    from cluster.gateway.rollout.view import RolloutView

    now, prom = [0.0], FakePrometheus()
    a = Pod(api, "pod-a", now, prom)
    c = client.ApiClient(client.Configuration(host=api.url))
    gateway = ConfigMapRollouts(client.CoreV1Api(c), NS, configmap_name(NAME), max_age_s=0.25)
    view = RolloutView(parse_config(OWC), gateway)
    view.reload()
    assert view.weight("tiny") == 0.0  # nothing written yet: all on stable
    a.round()
    view.reload()
    assert view.weight("tiny") == 0.0  # read 0.25 s ago at most: the same answer
    gateway._cached = None
    view.reload()
    assert view.weight("tiny") == 20.0
    api.server.shutdown()  # the API server gone: the last weight read stays in force
    api.server.server_close()
    gateway._cached = (-1.0, gateway._cached[1])
    view.reload()
    assert view.weight("tiny") == 20.0
    monkeypatch.setattr(rollout_configmap, "in_cluster", lambda ref: ("configmap", ref))
    assert rollout_store("/m", {"OWC_ROLLOUT_CONFIGMAP": "serving/owc-rollouts"}) == ("configmap", "serving/owc-rollouts")
    assert isinstance(rollout_store("/m", {}), RolloutFiles)


def test_owc_controller_once_takes_the_lease_and_starts_the_rollout(api, tmp_path):
    """The CLI's wiring: `owc controller --kubernetes --once` on a config with a candidate and
    nothing to autoscale takes the Lease and writes step 1 to the ConfigMap it is given (its
    own process: the kubernetes client reads KUBECONFIG at import and keeps it globally)."""
    import os
    import subprocess
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.unit.test_capacity_failover import kubeconfig

    prom = FakePrometheus()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def do_GET(self):  # noqa: N802
            body = prom(httpx.Request("GET", "http://prometheus" + self.path)).content
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cfg = tmp_path / "owc.yaml"
    cfg.write_text(yaml.safe_dump(OWC))
    try:
        r = subprocess.run(
            [sys.executable, "-m", "cluster.cli", "controller", str(cfg), "--kubernetes", "--once", "--metrics-port", "0",
             "--interval", "5", "--prometheus", f"http://127.0.0.1:{server.server_address[1]}", "--namespace", NS,
             "--rayservice", NAME, "--identity", "pod-a", "--rollout-configmap", configmap_name(NAME)],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "KUBECONFIG": str(kubeconfig(tmp_path, api.url)), "COLUMNS": "200"})
    finally:
        server.shutdown()
        server.server_close()
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "rollout of tiny: analysing, step 1, weight 20%" in out
    st = state(api)
    assert (st.state, st.weight) == ("analysing", 20)
    lease = api.objects[f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/owc-controller"]
    assert lease["spec"]["holderIdentity"] == "pod-a"
