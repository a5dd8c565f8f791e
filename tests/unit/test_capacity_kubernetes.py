"""The Kubernetes actuator and Lease election through the real `kubernetes` client against
an in-test HTTP server implementing the endpoints they use (RayService get/patch with
merge patches and resourceVersion conflicts, a generation bumped by spec changes, a status
only KubeRay writes; Lease get/create/replace). Every patched RayService validates against
the KubeRay CRD, and its embedded Serve config with Ray's own schema and `owc config
validate`."""

from __future__ import annotations

import copy
import datetime as dt
import json
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonschema
import pytest
import yaml
from kubernetes import client

from cluster.capacity.actuators import Conflict, KubernetesActuator, LeaseElector
from cluster.capacity.controller import CapacityController
from cluster.capacity.policy import Signals
from cluster.config.loader import parse_config
from tests.chart.test_chart import crd_schema

NS, NAME = "serving", "owc"
OWC = {
    "models": {
        "gpt-oss-20b": {"source": "openai/gpt-oss-20b", "accelerator": {"kind": "gpu"},
                        "replicas": {"min": 1, "max": 4}, "autoscaling": {"enabled": True, "up_cooldown_s": 0}},
        "tiny": {"source": "demo:tiny-llama"},
    },
    "gateway": {"host": "0.0.0.0", "api_keys_file": "/etc/owc/keys.yaml"},
}


def rayservice(config: dict = OWC) -> dict:
    serve = {"proxy_location": "EveryNode", "http_options": {"host": "0.0.0.0", "port": 8000},
             "applications": [{"name": "owc", "import_path": "cluster.app:app_builder", "route_prefix": None,
                               "args": {"config": config}}]}
    return {
        "apiVersion": "ray.io/v1", "kind": "RayService",
        "metadata": {"name": NAME, "namespace": NS, "resourceVersion": "1", "generation": 1},
        "spec": {"serveConfigV2": yaml.safe_dump(serve), "rayClusterConfig": {
            "rayVersion": "2.60.0",
            "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [
                {"name": "ray-head", "image": "owc:1"}]}}},
        }},
    }


def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class FakeApi:
    """The few Kubernetes API endpoints the controller uses, with optimistic concurrency."""

    def __init__(self, config: dict = OWC):
        self.objects: dict[str, dict] = {f"/apis/ray.io/v1/namespaces/{NS}/rayservices/{NAME}": rayservice(config)}
        self.lock = threading.Lock()
        self.rv = 1
        self.patches: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self):
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

            def _status(self, code, reason):
                self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                                  "code": code, "message": reason})

            def do_GET(self):
                path, _, query = self.path.partition("?")
                with api.lock:
                    obj = api.objects.get(path)
                    if obj is None and path.endswith("/pods"):  # a list by label (the rollouts' conformance gate)
                        sel = urllib.parse.parse_qs(query).get("labelSelector", [""])[0]
                        want = dict(kv.split("=", 1) for kv in sel.split(",") if kv)
                        items = [o for p, o in sorted(api.objects.items()) if p.rpartition("/")[0] == path
                                 and want.items() <= o["metadata"].get("labels", {}).items()]
                        return self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
                    self._send(200, obj) if obj else self._status(404, "NotFound")

            def do_POST(self):  # create a Lease
                body = self._body()
                path = f"{self.path}/{body['metadata']['name']}"
                with api.lock:
                    if path in api.objects:
                        return self._status(409, "AlreadyExists")
                    api.rv += 1
                    body["metadata"]["resourceVersion"] = str(api.rv)
                    api.objects[path] = body
                    self._send(201, body)

            def _write(self, new):
                old = api.objects.get(self.path)
                if old is None:
                    return self._status(404, "NotFound")
                sent = (new.get("metadata") or {}).get("resourceVersion")
                if sent and sent != old["metadata"]["resourceVersion"]:
                    return self._status(409, "Conflict")
                api.rv += 1
                new["metadata"] = {**old["metadata"], **new.get("metadata", {}), "resourceVersion": str(api.rv)}
                if "generation" in old["metadata"]:  # a custom resource with a status subresource
                    new["metadata"]["generation"] = old["metadata"]["generation"] + (new.get("spec") != old.get("spec"))
                    new.pop("status", None)  # writes to the main resource leave the status alone
                    if "status" in old:
                        new["status"] = old["status"]
                api.objects[self.path] = new
                self._send(200, new)

            def do_PUT(self):
                with api.lock:
                    self._write(self._body())

            def do_PATCH(self):
                assert self.headers["Content-Type"] == "application/merge-patch+json"
                patch = self._body()
                with api.lock:
                    api.patches.append(patch)
                    old = api.objects.get(self.path)
                    if old is None:
                        return self._status(404, "NotFound")
                    self._write(merge_patch(copy.deepcopy(old), patch))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def rayservice(self) -> dict:
        return self.objects[f"/apis/ray.io/v1/namespaces/{NS}/rayservices/{NAME}"]

    def serve_config(self) -> dict:
        return yaml.safe_load(self.rayservice()["spec"]["serveConfigV2"])

    def kuberay_reports(self, app: str, deployments: dict[str, str], *, app_status: str = "RUNNING") -> None:
        """What KubeRay writes to the status subresource after a reconcile: Serve's
        application and deployment statuses (no replica counts: the CRD has none)."""
        with self.lock:
            obj = self.rayservice()
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            obj["status"] = {
                "observedGeneration": obj["metadata"]["generation"],
                "serviceStatus": "Running",
                "activeServiceStatus": {"rayClusterName": f"{NAME}-abc12", "applicationStatuses": {app: {
                    "status": app_status, "serveDeploymentStatuses": {d: {"status": st} for d, st in deployments.items()},
                }}},
            }


@pytest.fixture
def api():
    a = FakeApi()
    yield a
    a.server.shutdown()


def clients(url: str) -> tuple[client.CustomObjectsApi, client.CoordinationV1Api]:
    conf = client.Configuration(host=url)
    c = client.ApiClient(conf)
    return client.CustomObjectsApi(c), client.CoordinationV1Api(c)


def test_actuator_reads_and_patches_the_engine_replica_count(api, tmp_path):
    from ray.serve.schema import ServeDeploySchema

    custom, _ = clients(api.url)
    act = KubernetesActuator(api=custom, namespace=NS, name=NAME)
    assert act.replicas("gpt-oss-20b") == (1, None)  # replicas.min, before the controller ever acted
    act.scale("gpt-oss-20b", 3)
    assert act.replicas("gpt-oss-20b") == (3, None)  # no status yet: running unknown
    act.scale("gpt-oss-20b", 2)
    cfg = api.serve_config()
    (app,) = cfg["applications"]
    assert app["deployments"] == [{"name": "engine-gpt-oss-20b", "num_replicas": 2}]
    assert app["args"]["config"] == OWC  # nothing but the count changed
    # every patch carried the resourceVersion it was based on, and only serveConfigV2
    assert all(set(p) == {"metadata", "spec"} and set(p["spec"]) == {"serveConfigV2"} for p in api.patches)
    jsonschema.Draft7Validator(crd_schema("RayService", "v1")).validate(api.rayservice())
    ServeDeploySchema.parse_obj(cfg)
    path = tmp_path / "owc.yaml"
    path.write_text(yaml.safe_dump(app["args"]["config"]))
    r = subprocess.run([sys.executable, "-m", "cluster.cli", "config", "validate", "--no-engine-args", str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_running_comes_from_the_rayservice_status_not_the_target(api):
    custom, _ = clients(api.url)
    act = KubernetesActuator(api=custom, namespace=NS, name=NAME)
    engine = "engine-gpt-oss-20b"
    api.kuberay_reports("owc", {engine: "HEALTHY", "gateway": "HEALTHY"})
    assert act.replicas("gpt-oss-20b") == (1, 1)  # KubeRay saw this spec and Serve has it all up
    act.scale("gpt-oss-20b", 3)
    assert api.rayservice()["metadata"]["generation"] == 2
    # the status still says HEALTHY, but of the spec before the patch: not 3 running
    assert act.replicas("gpt-oss-20b") == (3, None)
    api.kuberay_reports("owc", {engine: "UPSCALING", "gateway": "HEALTHY"}, app_status="DEPLOYING")
    assert act.replicas("gpt-oss-20b") == (3, None)  # the worker pods are still coming
    jsonschema.Draft7Validator(crd_schema("RayService", "v1")).validate(api.rayservice())
    api.kuberay_reports("owc", {engine: "HEALTHY", "gateway": "HEALTHY"})
    assert act.replicas("gpt-oss-20b") == (3, 3)
    api.kuberay_reports("owc", {engine: "UNHEALTHY", "gateway": "HEALTHY"}, app_status="UNHEALTHY")
    assert act.replicas("gpt-oss-20b") == (3, None)
    api.kuberay_reports("other-app", {engine: "HEALTHY"})
    assert act.replicas("gpt-oss-20b") == (3, None)
    # the controller acts on the target alone: an unknown running count changes nothing
    from prometheus_client import CollectorRegistry

    ctl = CapacityController(config=parse_config(OWC), signals=FixedSignals(ongoing=20), registry=CollectorRegistry(),
                             clock=lambda: 1001.0, actuator=act)
    assert ctl.reconcile_once()["gpt-oss-20b"].target == 3 and len(api.patches) == 1


def test_a_concurrent_change_is_a_conflict_not_an_overwrite(api):
    custom, _ = clients(api.url)
    act = KubernetesActuator(api=custom, namespace=NS, name=NAME)
    real_get = act._get

    def stale_get():  # read, then someone else (a helm upgrade) writes before our patch
        obj = real_get()
        with api.lock:
            api.rv += 1
            api.rayservice()["metadata"]["resourceVersion"] = str(api.rv)
        return obj

    act._get = stale_get
    with pytest.raises(Conflict):
        act.scale("gpt-oss-20b", 4)
    assert "deployments" not in api.serve_config()["applications"][0]


def test_lease_allows_one_leader_and_fails_over_when_it_expires(api):
    _, coord = clients(api.url)
    now = [dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)]
    a = LeaseElector(api=coord, namespace=NS, name="owc-controller", identity="pod-a", duration_s=15,
                     renew_interval_s=5, clock=lambda: now[0])
    b = LeaseElector(api=coord, namespace=NS, name="owc-controller", identity="pod-b", duration_s=15,
                     renew_interval_s=5, clock=lambda: now[0])
    assert a.is_leader() and not b.is_leader()
    now[0] += dt.timedelta(seconds=10)
    assert a.is_leader() and not b.is_leader()  # a renews
    now[0] += dt.timedelta(seconds=16)  # a stopped renewing: b takes over
    assert b.is_leader() and not a.is_leader()
    lease = coord.read_namespaced_lease("owc-controller", NS)
    assert lease.spec.holder_identity == "pod-b" and lease.spec.lease_transitions == 1


class FixedSignals:
    def __init__(self, ongoing):
        self.ongoing = ongoing

    def read(self, model):
        return Signals(at=1000.0, ongoing=self.ongoing)


def test_two_controllers_only_the_lease_holder_scales(api):
    from prometheus_client import CollectorRegistry

    cfg = parse_config(OWC)
    ctls = []
    for who in ("pod-a", "pod-b"):
        custom, coord = clients(api.url)
        ctls.append(CapacityController(
            config=cfg, signals=FixedSignals(ongoing=20), registry=CollectorRegistry(), clock=lambda: 1001.0,
            actuator=KubernetesActuator(api=custom, namespace=NS, name=NAME),
            elector=LeaseElector(api=coord, namespace=NS, name="owc-controller", identity=who),
        ))
    assert ctls[0].models == ["gpt-oss-20b"]  # only models with autoscaling.enabled
    first = ctls[0].reconcile_once()
    second = ctls[1].reconcile_once()
    assert first["gpt-oss-20b"].target == 3 and second == {}  # 20 in flight / 8 per replica
    assert len(api.patches) == 1
    assert ctls[1].metrics.leader._value.get() == 0 and ctls[0].metrics.last_reconcile._value.get() == 1001.0


OWC_GW = {**OWC, "gateway": {**OWC["gateway"], "replicas": {"min": 1, "max": 4},
                             "autoscaling": {"target_in_flight_per_replica": 100, "up_cooldown_s": 0}}}


class GatewaySignalsFixed:
    def __init__(self, in_flight, ongoing=20):
        self.in_flight, self.ongoing = in_flight, ongoing

    def read(self, key):
        from cluster.capacity.gateway_policy import GATEWAY, GatewaySignals

        if key == GATEWAY:
            return GatewaySignals(at=1000.0, in_flight=self.in_flight)
        return Signals(at=1000.0, ongoing=self.ongoing)


def test_the_gateway_key_is_the_gateway_deployment():
    from cluster.capacity.actuators import serve_deployment
    from cluster.capacity.gateway_policy import GATEWAY
    from cluster.gateway.edge.deployment import gateway_deployment

    assert serve_deployment(GATEWAY) == gateway_deployment(parse_config(OWC_GW)).name == "owc-gateway"
    assert serve_deployment("gpt-oss-20b") == "engine-gpt-oss-20b"


@pytest.mark.parametrize("replicas, start", [({"min": 2, "max": 4}, 2), ({"min": 1, "max": 4, "initial": 3}, 3),
                                              (2, 2), (None, 1)])
def test_gateway_target_before_the_controller_wrote_one(replicas, start):
    from cluster.capacity.gateway_policy import GATEWAY

    gw = {k: v for k, v in OWC_GW["gateway"].items() if k != "replicas"}
    api = FakeApi({**OWC_GW, "gateway": gw if replicas is None else {**gw, "replicas": replicas}})
    try:
        custom, _ = clients(api.url)
        assert KubernetesActuator(api=custom, namespace=NS, name=NAME).replicas(GATEWAY) == (start, None)
    finally:
        api.server.shutdown()


def test_the_controller_patches_the_gateway_replicas_and_the_patch_validates(tmp_path):
    """The gateway's count goes where the engines' does — the owc application's
    ``deployments`` list in serveConfigV2 — next to them, nothing else changed; the object
    validates against KubeRay's CRD, the Serve config against Ray's schema, and the owc
    config in it against `owc config validate`."""
    from prometheus_client import CollectorRegistry
    from ray.serve.schema import ServeDeploySchema

    from cluster.capacity.gateway_policy import GATEWAY

    api = FakeApi(OWC_GW)
    try:
        custom, coord = clients(api.url)
        act = KubernetesActuator(api=custom, namespace=NS, name=NAME)
        assert act.replicas(GATEWAY) == (1, None)  # gateway.replicas.min, before the controller acted
        ctl = CapacityController(config=parse_config(OWC_GW), signals=GatewaySignalsFixed(in_flight=250),
                                 registry=CollectorRegistry(), clock=lambda: 1001.0, actuator=act,
                                 elector=LeaseElector(api=coord, namespace=NS, name="owc-controller", identity="pod-a"))
        assert ctl.models == ["gpt-oss-20b", GATEWAY]
        out = ctl.reconcile_once()
        assert (out[GATEWAY].target, out[GATEWAY].reason) == (3, "up:load")  # 250 / 100 per process
        assert (out["gpt-oss-20b"].target, out["gpt-oss-20b"].reason) == (3, "up:load")
        assert act.replicas(GATEWAY) == (3, None) and act.replicas("gpt-oss-20b") == (3, None)
        assert ctl.metrics.target.labels(GATEWAY)._value.get() == 3
        api.kuberay_reports("owc", {"engine-gpt-oss-20b": "UPSCALING", GATEWAY: "HEALTHY"}, app_status="DEPLOYING")
        assert act.replicas(GATEWAY) == (3, None)  # the application is still deploying
        api.kuberay_reports("owc", {"engine-gpt-oss-20b": "HEALTHY", GATEWAY: "HEALTHY"})
        assert act.replicas(GATEWAY) == (3, 3) and act.replicas("gpt-oss-20b") == (3, 3)
        act.scale(GATEWAY, 2)
        cfg = api.serve_config()
        (app,) = cfg["applications"]
        assert app["deployments"] == [{"name": "engine-gpt-oss-20b", "num_replicas": 3},
                                      {"name": GATEWAY, "num_replicas": 2}]
        assert app["args"]["config"] == OWC_GW  # nothing but the counts changed
        assert all(set(p) == {"metadata", "spec"} and set(p["spec"]) == {"serveConfigV2"} for p in api.patches)
        jsonschema.Draft7Validator(crd_schema("RayService", "v1")).validate(api.rayservice())
        ServeDeploySchema.parse_obj(cfg)
        path = tmp_path / "owc.yaml"
        path.write_text(yaml.safe_dump(app["args"]["config"]))
        r = subprocess.run([sys.executable, "-m", "cluster.cli", "config", "validate", "--no-engine-args", str(path)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        # the scalings are recorded on the Lease (the next leader's cooldowns)
        lease = coord.read_namespaced_lease("owc-controller", NS)
        events = json.loads(lease.metadata.annotations["owc.io/capacity-events"])
        assert events == {GATEWAY: [1001.0, None], "gpt-oss-20b": [1001.0, None]}
    finally:
        api.server.shutdown()


class MemoryActuator:
    """Replica targets in memory: what the controller set is what is in force."""

    def __init__(self, **replicas):
        self.n = dict(replicas)

    def replicas(self, key):
        return self.n[key], self.n[key]

    def scale(self, key, target):
        self.n[key] = target


class SeqSignals:
    def __init__(self, clock):
        self.clock, self.ongoing = clock, None

    def read(self, model):
        return None if self.ongoing is None else Signals(at=self.clock() - 1, ongoing=self.ongoing, queue=0)


HOLD_CFG = {"models": {"m": {"source": "external", "replicas": {"min": 1, "max": 3}, "autoscaling": {
    "enabled": True, "up_cooldown_s": 30, "down_stabilization_s": 60, "down_cooldown_s": 0}}},
    "gateway": {"api_keys_env": None}}


@pytest.mark.parametrize("steps", [[
    # (t, ongoing, reason decided, owc_controller_hold{model="m"} by reason afterwards)
    (0, None, "hold:no_data", {"no_data": 1}),
    (10, 12, "up:load", {"no_data": 0}),  # a scaling: every hold series 0
    (20, 20, "hold:up_cooldown:load", {"no_data": 0, "up_cooldown": 1}),
    (30, 12, "hold:steady", {"no_data": 0, "up_cooldown": 0, "steady": 1}),
    (40, 2, "hold:down_stabilizing", {"no_data": 0, "up_cooldown": 0, "steady": 0, "down_stabilizing": 1}),
    (70, 2, "hold:down_stabilizing", {"no_data": 0, "up_cooldown": 0, "steady": 0, "down_stabilizing": 1}),
    (100, 2, "down:low_load", {"no_data": 0, "up_cooldown": 0, "steady": 0, "down_stabilizing": 0}),
    (110, None, "hold:no_data", {"no_data": 1, "up_cooldown": 0, "steady": 0, "down_stabilizing": 0}),
]])
def test_the_hold_gauge_shows_the_reason_of_the_last_hold(steps):
    from prometheus_client import CollectorRegistry

    now = [0.0]
    signals = SeqSignals(lambda: now[0])
    registry = CollectorRegistry()
    ctl = CapacityController(config=parse_config(HOLD_CFG), signals=signals, actuator=MemoryActuator(m=1),
                             registry=registry, clock=lambda: now[0])
    for t, ongoing, reason, gauge in steps:
        now[0], signals.ongoing = t, ongoing
        assert ctl.reconcile_once()["m"].reason == reason, t
        got = {s.labels["reason"]: s.value for fam in registry.collect() if fam.name == "owc_controller_hold"
               for s in fam.samples if s.labels["model"] == "m"}
        assert got == gauge, t
    ctl._follow()  # a follower decides nothing: nothing shows as held
    assert {s.value for fam in registry.collect() if fam.name == "owc_controller_hold" for s in fam.samples} == {0}


def test_an_unreachable_prometheus_holds_with_no_data():
    """Connection refused: no exception out of the round, no error counted, no scaling; the
    hold gauge says why."""
    from prometheus_client import CollectorRegistry

    from cluster.capacity.signals import PrometheusSignals

    act = MemoryActuator(m=2)
    ctl = CapacityController(config=parse_config(HOLD_CFG), signals=PrometheusSignals("http://127.0.0.1:9"),
                             actuator=act, registry=CollectorRegistry())
    for _ in range(2):
        assert ctl.reconcile_once()["m"].reason == "hold:no_data"
    assert act.n == {"m": 2}
    assert ctl.metrics.hold.labels("m", "no_data")._value.get() == 1
    assert ctl.metrics.errors.labels("m")._value.get() == 0 and ctl.metrics.last_reconcile._value.get() > 0
