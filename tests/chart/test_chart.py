"""The Helm chart with real binaries: helm lint/template for every helm/owc/ci values
file; impossible values fail; built-in objects pass kubernetes-validate --strict (1.30 and
1.35); custom resources pass their CRDs (../shared/crds) with unknown fields rejected; the
embedded Serve config passes Ray's Serve schema and `owc config validate`; checkov finds
nothing outside helm/owc/.checkov.yaml's skip list."""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cluster.config.chart_schema import render as render_values_schema
from cluster.config.chart_schema import render_defaults as render_config_defaults
from tests.conftest import REPO
from tests.tools import TOOLS_BIN, tool

CHART = REPO / "helm" / "owc"
PROMETHEUS_DIR = REPO / "cluster" / "metrics" / "prometheus"
GRAFANA_DIR = REPO / "cluster" / "metrics" / "grafana"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
INVALID = sorted((REPO / "tests" / "chart" / "invalid").glob("*.yaml"))
# Upstream CRDs, vendored unchanged from ../shared/crds (see tests/chart/crds/README.md).
CRDS = REPO / "tests" / "chart" / "crds"
SHARED_CRDS = REPO.parent / "shared" / "crds"
K8S_VERSIONS = ("1.30.0", "1.35.0")
CUSTOM = {"RayService", "PodMonitor", "PrometheusRule"}


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("helm"), *args], capture_output=True, text=True, timeout=120)


@functools.cache
def rendered(values: Path) -> list[dict]:
    r = helm("template", "owc", str(CHART), "--namespace", "llm", "-f", str(values))
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def ids(paths):
    return [p.stem for p in paths]


@pytest.mark.skipif(not SHARED_CRDS.is_dir(), reason="no ../shared checkout next to this one")
def test_vendored_crds_equal_shared():
    for f in SHARED_CRDS.glob("*.yaml"):
        assert (CRDS / f.name).read_bytes() == f.read_bytes(), f.name


def test_ci_values_cover_the_required_cases():
    assert {"minimal-values", "gpt-oss-20b-1gpu-values", "gpt-oss-120b-tp2-values", "two-models-values"} <= {p.stem for p in CI_VALUES}


@pytest.mark.parametrize("values", CI_VALUES, ids=ids(CI_VALUES))
def test_helm_lint_strict(values):
    r = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("values", INVALID, ids=ids(INVALID))
def test_impossible_values_fail_rendering(values):
    expect = values.read_text().splitlines()[0].removeprefix("# expect:").strip()
    r = helm("template", "owc", str(CHART), "-f", str(values))
    assert r.returncode != 0, f"{values.name} rendered"
    assert expect in r.stderr, r.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=ids(CI_VALUES))
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_objects_validate_strict(values, version):
    for doc in rendered(values):
        if doc["kind"] in CUSTOM:
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def _strict(schema):
    """Structural schemas prune unknown fields except under preserve-unknown-fields: treat
    every other object as closed, as the API server's strict field validation does."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    return schema


@functools.cache
def crd_schema(kind: str, version: str) -> dict:
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            v = next(v for v in crd["spec"]["versions"] if v["name"] == version)
            return _strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
    raise KeyError(kind)


@pytest.mark.parametrize("values", CI_VALUES, ids=ids(CI_VALUES))
def test_custom_resources_validate_against_crds(values):
    seen = set()
    for doc in rendered(values):
        if doc["kind"] not in CUSTOM:
            continue
        schema = crd_schema(doc["kind"], doc["apiVersion"].split("/")[1])
        jsonschema.Draft7Validator(schema).validate(doc)
        seen.add(doc["kind"])
    assert "RayService" in seen


def rayservice(values: Path) -> dict:
    return next(d for d in rendered(values) if d["kind"] == "RayService")


@pytest.mark.parametrize("values", CI_VALUES, ids=ids(CI_VALUES))
def test_embedded_serve_config_passes_ray_and_owc_validation(values, tmp_path):
    from ray.serve.schema import ServeDeploySchema

    serve_cfg = yaml.safe_load(rayservice(values)["spec"]["serveConfigV2"])
    ServeDeploySchema.parse_obj(serve_cfg)
    (app,) = serve_cfg["applications"]
    assert app["import_path"] == "cluster.app:app_builder"
    path = tmp_path / "owc.yaml"
    path.write_text(yaml.safe_dump(app["args"]["config"]))
    # `owc config validate` in this process (vLLM's argument parsers imported once, not once
    # per values file in a fresh interpreter: ~10 s each).
    from typer.testing import CliRunner

    from cluster.cli import app as cli
    r = CliRunner().invoke(cli, ["config", "validate", str(path)])
    assert r.exit_code == 0, r.output
    # The model config is the user's, as `owc serve` would read it (none: the chart's default model).
    assert app["args"]["config"]["models"] == _user_models(values)


def _user_models(values: Path) -> dict:
    """The values file's models, or the chart's default model when it sets none."""
    user = (yaml.safe_load(values.read_text()) or {}).get("owc", {}).get("models")
    default = yaml.safe_load((CHART / "values.yaml").read_text())["defaultModel"]
    return user or {default["name"]: default["config"]}


@pytest.mark.parametrize("values", CI_VALUES, ids=ids(CI_VALUES))
def test_worker_groups_sized_from_parallelism_and_pods_hardened(values):
    spec = rayservice(values)["spec"]["rayClusterConfig"]
    models = _user_models(values)
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert "gateway" in groups
    for name, m in models.items():
        g = next(g for g in groups.values() if g["template"]["metadata"].get("annotations", {}).get("owc.io/model") == name)
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        if (m.get("accelerator") or {}).get("kind") == "gpu":
            assert limits["nvidia.com/gpu"] == m.get("tensor_parallel_size", 1) * m.get("pipeline_parallel_size", 1)
        else:
            assert "nvidia.com/gpu" not in limits
        r = m.get("replicas", {})
        # during a rollout the candidate's replicas (its own, else the model's) need pods too
        extra = m["candidate"].get("replicas", r).get("max", 1) if m.get("candidate") else 0
        assert g["minReplicas"] == r.get("min", 1) and g["maxReplicas"] == r.get("max", 1) + extra
        probe = g["template"]["spec"]["containers"][0]["startupProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] >= m.get("startup_timeout_s", 600)
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        for c in pod["spec"]["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert sc["readOnlyRootFilesystem"] is True
            assert c["resources"]["limits"] and c["resources"]["requests"]
    # Ray's dashboard/job API stays inside: ClusterIP head, nothing else exposes 8265.
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    for doc in rendered(values):
        if doc["kind"] in ("Service", "Ingress"):
            assert "8265" not in json.dumps(doc) and "dashboard" not in json.dumps(doc)


def test_network_policy_admits_outside_traffic_only_to_the_gateway():
    docs = rendered(CHART / "ci" / "minimal-values.yaml")
    pols = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    gw = pols["owc-gateway"]
    assert gw["spec"]["podSelector"]["matchLabels"]["owc.io/component"] == "gateway"
    assert [p["port"] for r in gw["spec"]["ingress"] for p in r["ports"]] == [9000]
    ray = pols["owc-ray"]
    for rule in ray["spec"]["ingress"]:
        assert rule.get("from"), "an open ingress rule on Ray's ports"


def _admits(rule: dict, port: int) -> bool:
    """Whether a NetworkPolicy ingress rule admits TCP ``port`` (no ports: every port)."""
    ports = rule.get("ports")
    if not ports:
        return True
    return any(p.get("protocol", "TCP") == "TCP" and p["port"] <= port <= p.get("endPort", p["port"]) for p in ports)


@pytest.mark.parametrize("values", CI_VALUES, ids=ids(CI_VALUES))
def test_engine_port_admits_only_gateway_pods_and_prometheus(values):
    """Across every policy that selects engine pods, the engine port's peers are the
    release's gateway pods and the Prometheus namespace, nothing else — and the controller
    pods where a rollout's conformance gate calls the engines (its --engine-pods)."""
    docs = rendered(values)
    ctl = [c for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-controller")
           for c in d["spec"]["template"]["spec"]["containers"]]
    callers = {"gateway", "controller"} if any("--engine-pods" in c["command"] for c in ctl) else {"gateway"}
    port = int(yaml.safe_load((CHART / "values.yaml").read_text())["engineWorkers"]["port"])
    engine_labels = next(g["template"]["metadata"]["labels"] for d in docs if d["kind"] == "RayService"
                         for g in d["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] != "gateway")
    peers = []
    for pol in (d for d in docs if d["kind"] == "NetworkPolicy"):
        sel = pol["spec"]["podSelector"].get("matchLabels", {})
        if not all(engine_labels.get(k) == v for k, v in sel.items()):
            continue
        for rule in pol["spec"].get("ingress", []):
            if _admits(rule, port):
                assert rule.get("from"), f"{pol['metadata']['name']}: the engine port open to anyone"
                peers += rule["from"]
    assert peers, "no policy covers the engine port"
    for peer in peers:
        if "podSelector" in peer:
            assert peer["podSelector"]["matchLabels"].get("owc.io/component") in callers, peer
        else:
            assert set(peer) == {"namespaceSelector"}, peer
            assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}, peer


@pytest.mark.parametrize("values", CI_VALUES, ids=ids(CI_VALUES))
def test_engine_key_reaches_gateways_and_engines_from_a_secret_only(values):
    docs = rendered(values)
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "owc-engine-key")
    assert len(secret["stringData"]["engine-key"]) >= 40
    groups = next(d for d in docs if d["kind"] == "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    for g in groups:
        env = {e["name"]: e for c in g["template"]["spec"]["containers"] for e in c.get("env", [])}
        assert env["OWC_ENGINE_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "owc-engine-key", "key": "engine-key"}
    serve = next(d for d in docs if d["kind"] == "RayService")["spec"]["serveConfigV2"]
    assert secret["stringData"]["engine-key"] not in serve  # never in the Serve config (Ray's runtime_env)


def test_the_defaults_install_gpt_oss_20b_with_a_generated_key():
    r = helm("lint", "--strict", str(CHART))
    assert r.returncode == 0, r.stdout + r.stderr
    docs = rendered(CHART / "ci" / "defaults-values.yaml")
    serve = yaml.safe_load(next(d for d in docs if d["kind"] == "RayService")["spec"]["serveConfigV2"])
    models = serve["applications"][0]["args"]["config"]["models"]
    assert list(models) == ["gpt-oss-20b"] and models["gpt-oss-20b"]["accelerator"] == {"kind": "gpu"}
    keys = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "owc-api-keys")["stringData"]
    import hashlib

    digest = hashlib.sha256(keys["api-key"].encode()).hexdigest()
    assert yaml.safe_load(keys["api-keys.yaml"]) == {f"sha256:{digest}": "default"}
    assert keys["api-key"] not in keys["api-keys.yaml"]
    notes = helm("install", "owc", str(CHART), "--dry-run=client", "--namespace", "llm")
    assert notes.returncode == 0, notes.stderr
    assert "jsonpath='{.data.api-key}'" in notes.stdout and "gpt-oss-20b" in notes.stdout


def test_gateway_metrics_are_scraped_off_the_api_port():
    docs = rendered(CHART / "ci" / "gpt-oss-20b-1gpu-values.yaml")  # PodMonitors on
    pm = next(d for d in docs if d["kind"] == "PodMonitor" and d["metadata"]["name"] == "owc-gateway")
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == ["gw-metrics"]
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "owc")
    assert [p["targetPort"] for p in svc["spec"]["ports"]] in (["http"], [9000])


def test_rules_dashboards_and_schema_copies_are_current():
    for f in (PROMETHEUS_DIR / "rules").glob("*.yml"):
        assert (CHART / "files" / "rules" / f.name).read_text() == f.read_text(), f"run `make chart-files` ({f.name})"
    for f in GRAFANA_DIR.glob("*.json"):
        assert (CHART / "files" / "dashboards" / f.name).read_text() == f.read_text(), f"run `make chart-files` ({f.name})"
    assert (CHART / "values.schema.json").read_text() == render_values_schema(), "run `make chart-files`"
    assert (CHART / "files" / "config-defaults.yaml").read_text() == render_config_defaults(), "run `make chart-files`"
    rule = next(d for d in rendered(CHART / "ci" / "gpt-oss-20b-1gpu-values.yaml") if d["kind"] == "PrometheusRule")
    assert rule["spec"]["groups"] == shipped_rule_groups("2.0")


def shipped_rule_groups(slo: str) -> list[dict]:
    """The shipped rules with the TTFT SLO's bucket (2.0 s) replaced, as the chart does."""
    def text(f: Path) -> str:
        return f.read_text().replace('le="2.0"', f'le="{slo}"').replace("2.0 s", f"{slo} s")
    return [g for f in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")) for g in yaml.safe_load(text(f))["groups"]]


@pytest.mark.parametrize("value, label", [("5", "5.0"), ("2.5", "2.5"), ("1.0", "1.0")])
def test_ttft_slo_value_renders_into_rules_and_dashboards(value, label):
    r = helm("template", "owc", str(CHART), "--namespace", "llm", "-f", str(CHART / "ci" / "gpt-oss-20b-1gpu-values.yaml"),
             "--set-json", f"monitoring.ttftSloSeconds={value}")
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    assert rule["spec"]["groups"] == shipped_rule_groups(label)
    overview = next(d for d in docs if d["kind"] == "ConfigMap" and "owc-overview.json" in d.get("data", {}))
    assert f"first token ≤ {label} s" in overview["data"]["owc-overview.json"]


def test_image_and_ray_version_follow_the_pins():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'ray[serve]=={values["rayVersion"]}' in pyproject
    assert f"ARG RAY_VERSION={values['rayVersion']}" in (REPO / "deploy" / "Dockerfile").read_text()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert rayservice(CHART / "ci" / "minimal-values.yaml")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"].endswith(":" + chart["appVersion"])


def test_checkov_finds_nothing_outside_the_skip_list(tmp_path):
    out = tmp_path / "rendered"
    out.mkdir()
    for values in CI_VALUES:
        r = helm("template", "owc", str(CHART), "--namespace", "llm", "-f", str(values))
        (out / f"{values.stem}.yaml").write_text(r.stdout)
    checkov = tool("checkov")
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "PATH": f"{TOOLS_BIN}{os.pathsep}{os.environ['PATH']}"}
    argv = [checkov, "-d", str(out), "--config-file", str(CHART / ".checkov.yaml"), "--skip-download", "-o", "json", "--quiet"]
    # No network: offline by construction, not by hope.
    r = subprocess.run(["unshare", "-n", *argv], capture_output=True, text=True, env=env, timeout=300)
    if r.returncode not in (0, 1) or not r.stdout.strip():
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)  # no unshare (unprivileged)
    report = json.loads(r.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [(c["check_id"], c["resource"]) for rep in reports for c in rep["results"].get("failed_checks", [])]
    passed = sum(rep["summary"]["passed"] for rep in reports)
    assert passed > 100 and all(rep["summary"]["parsing_errors"] == 0 for rep in reports)
    assert not failed, failed


def test_controller_objects_scale_only_their_rayservice():
    values = CHART / "ci" / "gpt-oss-20b-autoscaled-values.yaml"
    docs = {(d["kind"], d["metadata"]["name"]): d for d in rendered(values)}
    rs = next(d for (k, _), d in docs.items() if k == "RayService")
    name = rs["metadata"]["name"]
    dep = docs[("Deployment", f"{name}-controller")]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = c["command"]
    assert args[:3] == ["owc", "controller", "/etc/owc/config/owc.yaml"] and "--kubernetes" in args
    assert args[args.index("--rayservice") + 1] == name and args[args.index("--lease") + 1] == f"{name}-controller"
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == f"{name}-controller"
    # the controller reads the same owc config the RayService runs
    cm = yaml.safe_load(docs[("ConfigMap", f"{name}-controller")]["data"]["owc.yaml"])
    assert cm == yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["config"]
    # its Role: get/patch on this RayService, its own Lease, nothing else
    rules = docs[("Role", f"{name}-controller")]["rules"]
    assert rules == [
        {"apiGroups": ["ray.io"], "resources": ["rayservices"], "resourceNames": [name], "verbs": ["get", "patch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [f"{name}-controller"],
         "verbs": ["get", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]
    assert ("PodMonitor", f"{name}-controller") in docs
    # every flag the chart passes exists
    r = subprocess.run([sys.executable, "-m", "cluster.cli", "controller", "--help"], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "COLUMNS": "200"})
    for flag in [a for a in args if a.startswith("--")]:
        assert flag in r.stdout, flag


def test_the_keys_secret_is_mounted_whole_so_a_rotation_reaches_running_gateways():
    """kubelet updates a mounted Secret in place (the gateway reloads the changed file:
    gateway.keys_reload_s) — except where it is mounted with subPath, which never updates."""
    docs = rendered(CHART / "ci" / "defaults-values.yaml")
    groups = next(d for d in docs if d["kind"] == "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    mounts = [m for g in groups for c in g["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])
              if m["name"] == "api-keys"]
    assert mounts and all("subPath" not in m for m in mounts)
    serve = yaml.safe_load(next(d for d in docs if d["kind"] == "RayService")["spec"]["serveConfigV2"])
    gw = serve["applications"][0]["args"]["config"]["gateway"]
    assert gw["api_keys_file"].startswith(mounts[0]["mountPath"] + "/")


def test_the_tenancy_store_is_shared_by_every_gateway_and_reachable_only_from_them():
    docs = rendered(CHART / "ci" / "tenancy-redis-values.yaml")
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "owc-redis")
    sts = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "owc-redis")
    assert sts["spec"]["replicas"] == 1 and sts["spec"]["volumeClaimTemplates"]
    serve = yaml.safe_load(next(d for d in docs if d["kind"] == "RayService")["spec"]["serveConfigV2"])
    gw = serve["applications"][0]["args"]["config"]["gateway"]
    assert gw["store"] == {"url": "redis://owc-redis:6379/0", "on_failure": "local"} and gw["replicas"] == 2
    assert svc["spec"]["selector"] == sts["spec"]["template"]["metadata"]["labels"]
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "owc-redis")
    assert policy["spec"]["podSelector"]["matchLabels"] == svc["spec"]["selector"]
    sources = [s for rule in policy["spec"]["ingress"] for s in rule["from"]]
    assert sources == [{"podSelector": {"matchLabels": {**{k: v for k, v in svc["spec"]["selector"].items()
                                                           if k != "owc.io/component"}, "owc.io/component": "gateway"}}}]


def test_an_external_store_url_from_a_secret_reaches_gateway_pods_only(tmp_path):
    values = tmp_path / "v.yaml"
    values.write_text(yaml.safe_dump({"tenancyStore": {"mode": "external", "onFailure": "closed",
                                                       "external": {"existingSecret": "tenancy-redis"}}}))
    docs = rendered(values)
    rs = next(d for d in docs if d["kind"] == "RayService")
    gw = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["config"]["gateway"]
    assert gw["store"]["url_env"] == "OWC_TENANCY_STORE_URL" and gw["store"]["on_failure"] == "closed"
    for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        env = {e["name"]: e for c in g["template"]["spec"]["containers"] for e in c.get("env", [])}
        if g["groupName"] == "gateway":
            assert env["OWC_TENANCY_STORE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "tenancy-redis", "key": "url"}
        else:
            assert "OWC_TENANCY_STORE_URL" not in env
    assert not [d for d in docs if d["kind"] == "StatefulSet"]


# --- Drains that hold on Kubernetes (issue 20) -----------------------------------------------

def render_values(tmp_path: Path, values: dict, name: str = "v") -> list[dict]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    r = helm("template", "owc", str(CHART), "--namespace", "llm", "-f", str(path))
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    for doc in docs:  # still valid against the vendored CRDs
        if doc["kind"] in CUSTOM:
            jsonschema.Draft7Validator(crd_schema(doc["kind"], doc["apiVersion"].split("/")[1])).validate(doc)
    return docs


def _owc_config(docs: list[dict]) -> dict:
    rs = next(d for d in docs if d["kind"] == "RayService")
    return yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["config"]


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _check_drains(docs: list[dict]) -> dict:
    """Every pod that serves traffic holds its drain: a grace period above its drain timeout
    (and above the Ray node drain, which must give Serve the replica's whole graceful
    shutdown), and a preStop hook; the head outlives them all; a NewCluster upgrade keeps the
    old cluster at least as long as the longest drain. Returns the drains it checked."""
    from cluster.config.schema import OwcConfig
    from cluster.engine.replica import engine_deployment
    from cluster.gateway.edge.deployment import gateway_deployment

    cfg = OwcConfig.model_validate(_owc_config(docs))
    rs = next(d for d in docs if d["kind"] == "RayService")
    spec = rs["spec"]["rayClusterConfig"]
    by_model = {name: m for name, m in cfg.models.items()}
    drains, graces = {}, []
    for g in spec["workerGroupSpecs"]:
        pod = g["template"]["spec"]
        (c,) = pod["containers"]
        grace = pod["terminationGracePeriodSeconds"]
        graces.append(grace)
        pre = c["lifecycle"]["preStop"]["exec"]["command"]
        ray_drain = float(_env(c)["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"])
        assert ray_drain < grace, g["groupName"]
        # the preStop drains the Ray node (no `ray stop`, which would kill vLLM at once), with
        # the deadline of Ray's SIGTERM handler; Serve stops a replica there by the deadline
        # less its graceful_shutdown_timeout_s, so the deadline must cover that
        assert "ray drain-node" in pre[-1] and "ray stop" not in pre[-1]
        if g["groupName"] == "gateway":
            drain = cfg.gateway.autoscaling.drain_timeout_s
            shutdown = gateway_deployment(cfg)._deployment_config.graceful_shutdown_timeout_s
            assert "kill -TERM" in pre[-1] and "cluster[.]gateway[.]main" in pre[-1]
            # endpoints drop the pod first, then the gateway drains for its whole timeout
            assert f"sleep {yaml.safe_load((CHART / 'values.yaml').read_text())['drain']['endpointDelaySeconds']}" in pre[-1]
            assert f"SECONDS + {math.ceil(drain)} + 5" in pre[-1]
            assert f"--deadline-remaining-seconds {int(ray_drain)}" in pre[-1]
        else:
            model = g["template"]["metadata"]["annotations"]["owc.io/model"]
            drain = by_model[model].autoscaling.drain_timeout_s
            shutdown = engine_deployment(model, by_model[model])._deployment_config.graceful_shutdown_timeout_s
            assert f"SECONDS + {int(ray_drain)})" in pre[-1]
        assert ray_drain >= shutdown, (g["groupName"], ray_drain, shutdown)
        assert grace >= drain + 30, (g["groupName"], grace, drain)
        drains[g["groupName"]] = drain
    head = spec["headGroupSpec"]["template"]["spec"]
    assert head["terminationGracePeriodSeconds"] >= max(graces)
    assert float(_env(head["containers"][0])["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"]) >= max(drains.values())
    assert rs["spec"]["rayClusterDeletionDelaySeconds"] >= max(drains.values())
    return drains


@pytest.mark.parametrize("values", CI_VALUES, ids=ids(CI_VALUES))
def test_every_pod_that_serves_traffic_holds_its_drain(values):
    _check_drains(rendered(values))


def test_drain_timeouts_come_from_the_owc_config(tmp_path):
    from cluster.config.autoscaling import Autoscaling
    from cluster.config.gateway import GatewayAutoscaling

    # the chart's defaults are the config's
    assert _check_drains(rendered(CHART / "ci" / "minimal-values.yaml")) == {
        "gateway": GatewayAutoscaling().drain_timeout_s, "engine-tiny-llama": Autoscaling().drain_timeout_s}
    docs = render_values(tmp_path, {
        "owc": {"models": {"a": {"source": "demo:tiny-llama", "autoscaling": {"drain_timeout_s": 1800}},
                           "b": {"source": "demo:tiny-llama"}},
                "gateway": {"autoscaling": {"drain_timeout_s": 900.5}}},
        "apiKeys": {"keys": {"k": "t"}}})
    assert _check_drains(docs) == {"gateway": 900.5, "engine-a": 1800, "engine-b": 600}
    rs = next(d for d in docs if d["kind"] == "RayService")
    groups = {g["groupName"]: g["template"]["spec"]["terminationGracePeriodSeconds"]
              for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert groups == {"gateway": 10 + 901 + 30 + 30, "engine-a": 1800 + 60, "engine-b": 600 + 60}
    assert rs["spec"]["rayClusterDeletionDelaySeconds"] == 1800 + 30


def test_the_gateway_worker_group_defaults_to_the_configs_gateway_count():
    from cluster.config.gateway import GatewayReplicas

    docs = rendered(CHART / "ci" / "minimal-values.yaml")  # no owc.gateway.replicas
    assert "replicas" not in _owc_config(docs)["gateway"]
    g = next(g for g in next(d for d in docs if d["kind"] == "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
             if g["groupName"] == "gateway")
    d = GatewayReplicas()
    assert (g["replicas"], g["minReplicas"], g["maxReplicas"]) == (d.start, d.min, d.max)


def test_gateway_replicas_keys_left_out_take_the_configs_defaults(tmp_path):
    from cluster.config.gateway import GatewayReplicas

    docs = render_values(tmp_path, {"owc": {"gateway": {"replicas": {"max": 16}}}, "apiKeys": {"keys": {"k": "t"}}})
    g = next(g for g in next(d for d in docs if d["kind"] == "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
             if g["groupName"] == "gateway")
    d = GatewayReplicas.model_validate({"max": 16})
    assert (g["replicas"], g["minReplicas"], g["maxReplicas"]) == (d.start, d.min, d.max)


@pytest.mark.parametrize("replicas, expect", [
    (3, (3, 3, 3)),
    ({"min": 2, "max": 6}, (2, 2, 6)),
    ({"min": 1, "max": 8, "initial": 4}, (4, 1, 8)),
])
def test_the_gateway_worker_group_follows_min_and_max(tmp_path, replicas, expect):
    docs = render_values(tmp_path, {"owc": {"gateway": {"replicas": replicas}}, "apiKeys": {"keys": {"k": "t"}}})
    g = next(g for g in next(d for d in docs if d["kind"] == "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
             if g["groupName"] == "gateway")
    assert (g["replicas"], g["minReplicas"], g["maxReplicas"]) == expect
    assert _owc_config(docs)["gateway"]["replicas"] == replicas  # the gateway's own config, as given


def test_impossible_gateway_replicas_fail(tmp_path):
    for replicas, expect in [({"min": 4, "max": 2}, "owc.gateway.replicas.min (4) > owc.gateway.replicas.max (2)"),
                             ({"min": 1, "max": 2, "initial": 3}, "owc.gateway.replicas.initial must lie within")]:
        path = tmp_path / "v.yaml"
        path.write_text(yaml.safe_dump({"owc": {"gateway": {"replicas": replicas}}}))
        r = helm("template", "owc", str(CHART), "-f", str(path))
        assert r.returncode != 0 and expect in r.stderr, r.stderr


def test_the_controller_runs_for_gateway_autoscaling_alone(tmp_path):
    values = {"owc": {"models": {"m": {"source": "demo:tiny-llama"}}, "gateway": {"replicas": {"min": 1, "max": 4}}},
              "apiKeys": {"keys": {"k": "t"}}, "controller": {"enabled": True}}
    docs = render_values(tmp_path, values)
    assert ("Deployment", "owc-controller") in {(d["kind"], d["metadata"]["name"]) for d in docs}
    # a fixed gateway count and no model autoscaling: nothing to scale
    values["owc"]["gateway"]["replicas"] = 2
    path = tmp_path / "fixed.yaml"
    path.write_text(yaml.safe_dump(values))
    r = helm("template", "owc", str(CHART), "-f", str(path))
    assert r.returncode != 0 and "the controller would have nothing to scale" in r.stderr


def test_the_idle_timeout_reaches_the_ingress_and_the_notes(tmp_path):
    base = {"apiKeys": {"keys": {"k": "t"}}, "ingress": {"enabled": True, "host": "llm.example.com"}}

    def ingress(values):
        return next(d for d in render_values(tmp_path, values) if d["kind"] == "Ingress")["metadata"].get("annotations", {})

    # nginx: read/send timeouts of the gateway's request timeout + 30 s
    ann = ingress({**base, "ingress": {**base["ingress"], "className": "nginx"}})
    assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "630"
    assert ann["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "630"
    ann = ingress({**base, "owc": {"gateway": {"limits": {"request_timeout_s": 1200}}},
                   "ingress": {**base["ingress"], "className": "nginx",
                               "annotations": {"nginx.ingress.kubernetes.io/proxy-send-timeout": "60"}}})
    assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "1230"
    assert ann["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "60"  # the user's annotation wins
    ann = ingress({**base, "ingress": {**base["ingress"], "className": "alb", "idleTimeoutSeconds": 900}})
    assert ann == {"alb.ingress.kubernetes.io/load-balancer-attributes": "idle_timeout.timeout_seconds=900"}
    assert ingress(base) == {}  # an unknown controller: NOTES says what to set
    path = tmp_path / "notes.yaml"
    path.write_text(yaml.safe_dump(base))
    notes = helm("install", "owc", str(CHART), "--dry-run=client", "--namespace", "llm", "-f", str(path))
    assert notes.returncode == 0, notes.stderr
    assert "idle timeout to at least 630 s" in notes.stdout
    lb = helm("install", "owc", str(CHART), "--dry-run=client", "--namespace", "llm",
              "-f", str(CHART / "ci" / "gpt-oss-20b-1gpu-values.yaml"))
    assert lb.returncode == 0, lb.stderr
    assert "aws-load-balancer-connection-idle-timeout: \"630\"" in lb.stdout
    assert "keepalive_timeout_s (75 s) above that idle timeout" in lb.stdout


class _FakeApi:
    """The few Kubernetes API endpoints `helm template --dry-run=server` reads: discovery,
    and GETs of objects (the live RayService given; everything else 404), so that the
    chart's `lookup` runs against a live object."""

    KINDS = {"v1": ["Secret", "Service", "ConfigMap", "ServiceAccount", "PersistentVolumeClaim", "Pod"],
             "apps/v1": ["Deployment", "StatefulSet"], "networking.k8s.io/v1": ["NetworkPolicy", "Ingress"],
             "policy/v1": ["PodDisruptionBudget"], "rbac.authorization.k8s.io/v1": ["Role", "RoleBinding"],
             "ray.io/v1": ["RayService"], "monitoring.coreos.com/v1": ["PodMonitor", "PrometheusRule"]}

    def __init__(self, objects: dict[str, dict]):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def send(self, code: int, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):  # noqa: N802
                path = self.path.split("?")[0]
                if path == "/version":
                    return self.send(200, {"major": "1", "minor": "35", "gitVersion": "v1.35.0"})
                if path == "/api":
                    return self.send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
                if path == "/apis":
                    groups = [{"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                               "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}}
                              for gv in api.KINDS if "/" in gv]
                    return self.send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
                gv = path.removeprefix("/api/").removeprefix("/apis/")
                if gv in api.KINDS:
                    return self.send(200, {"kind": "APIResourceList", "groupVersion": gv, "resources": [
                        {"name": api.plural(k), "singularName": k.lower(), "namespaced": True, "kind": k,
                         "verbs": ["get", "list"]} for k in api.KINDS[gv]]})
                if path in objects:
                    return self.send(200, objects[path])
                return self.send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                       "code": 404, "message": "not found"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @staticmethod
    def plural(kind: str) -> str:
        return kind.lower() + ("es" if kind.endswith("s") else "ies" if kind.endswith("y") else "s")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _render_against_live(tmp_path: Path, values: dict, deployments: list[dict]) -> list[dict]:
    """Render with the live RayService's owc application carrying ``deployments``."""
    serve = {"applications": [{"name": "owc", "import_path": "cluster.app:app_builder", "deployments": deployments}]}
    live = {"apiVersion": "ray.io/v1", "kind": "RayService",
            "metadata": {"name": "owc", "namespace": "llm", "labels": {"app.kubernetes.io/managed-by": "Helm"},
                         "annotations": {"meta.helm.sh/release-name": "owc", "meta.helm.sh/release-namespace": "llm"}},
            "spec": {"serveConfigV2": yaml.safe_dump(serve)}}
    api = _FakeApi({"/apis/ray.io/v1/namespaces/llm/rayservices/owc": live})
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": api.url}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t", "namespace": "llm"}}],
            "users": [{"name": "t", "user": {"token": "t"}}]}))
        path = tmp_path / "live-values.yaml"
        path.write_text(yaml.safe_dump(values))
        r = subprocess.run([tool("helm"), "template", "owc", str(CHART), "--namespace", "llm", "--dry-run=server",
                            "--disable-openapi-validation", "-f", str(path)], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    finally:
        api.close()
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.mark.parametrize("gateway, live, kept", [
    ({"min": 2, "max": 8}, 5, 5),        # the controller's count survives the upgrade
    ({"min": 2, "max": 8}, 12, 8),       # ... within the bounds the upgrade sets
    ({"min": 3, "max": 8}, 1, 3),
    (4, 6, None),                        # a fixed count: the chart's (the controller leaves it)
])
def test_an_upgrade_keeps_the_controllers_gateway_and_engine_counts(tmp_path, gateway, live, kept):
    values = {"owc": {"models": {"m": {"source": "demo:tiny-llama", "replicas": {"min": 1, "max": 4},
                                       "autoscaling": {"enabled": True}}},
                      "gateway": {"replicas": gateway}},
              "apiKeys": {"keys": {"k": "t"}}, "controller": {"enabled": True}}
    docs = _render_against_live(tmp_path, values, [{"name": "owc-gateway", "num_replicas": live},
                                                   {"name": "engine-m", "num_replicas": 3},
                                                   {"name": "engine-gone", "num_replicas": 2}])
    rs = next(d for d in docs if d["kind"] == "RayService")
    (app,) = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    counts = {d["name"]: d["num_replicas"] for d in app.get("deployments", [])}
    assert counts == ({"engine-m": 3} if kept is None else {"owc-gateway": kept, "engine-m": 3})
    jsonschema.Draft7Validator(crd_schema("RayService", "v1")).validate(rs)


# --- Run-time LoRA adapters survive gateway pods (issue 15) -------------------------------------

def _mounts(group: dict) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for c in group["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])}


def test_gateway_pods_share_the_model_cache_where_the_adapters_file_lives(tmp_path):
    """owc-adapters.json (run-time adapter additions) is in model_cache_dir: gateway pods (the
    admin API writes it, every gateway reads it) mount the same claim as engine pods when it
    can be shared (ReadWriteMany, the default, or a claim of your own), so an addition
    survives a gateway pod's restart and reaches every pod; a ReadWriteOnce claim is not."""
    for values, shared in (({}, True), ({"modelCache": {"accessModes": ["ReadWriteOnce"]}}, False),
                           ({"modelCache": {"accessModes": ["ReadWriteOnce"], "existingClaim": "mine"}}, True)):
        docs = render_values(tmp_path, values, name=f"mc-{shared}-{len(values)}")
        rs = next(d for d in docs if d["kind"] == "RayService")
        groups = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
        engine = next(g for n, g in groups.items() if n != "gateway")
        cache_dir = _owc_config(docs)["model_cache_dir"]
        assert cache_dir.startswith(_mounts(engine)["models"])
        assert (_mounts(groups["gateway"]).get("models") == _mounts(engine)["models"]) is shared, values
        claims = {v["persistentVolumeClaim"]["claimName"] for g in (engine, groups["gateway"])
                  for v in g["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
        assert len(claims) == 1


# --- The Batch API's files on a volume every gateway pod shares (issue 29) ----------------------

def test_batch_files_live_on_a_volume_every_gateway_pod_shares(tmp_path):
    """batchStore: a directory on the model cache when gateway pods share it (the default), a
    ReadWriteMany claim of its own (created, or existingClaim) mounted on gateway pods, and the
    Batch API off where no shared volume exists (a ReadWriteOnce model cache)."""
    for values, store_dir, claim in (
            ({}, "/models/owc/batch", None),
            ({"batchStore": {"volume": "claim"}}, "/var/lib/owc/batch", "created"),
            ({"batchStore": {"volume": "claim", "existingClaim": "files"}}, "/var/lib/owc/batch", "files"),
            ({"modelCache": {"accessModes": ["ReadWriteOnce"]}}, None, None)):
        docs = render_values(tmp_path, values, name=f"batch-{claim}-{len(values)}")
        batch = _owc_config(docs)["batch"]
        assert batch.get("store_dir") == store_dir and batch.get("enabled", True) is (store_dir is not None), values
        rs = next(d for d in docs if d["kind"] == "RayService")
        gw = next(g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gateway")
        pvcs = [d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"].endswith("-batch")]
        if claim is None:
            assert "batch" not in _mounts(gw) and not pvcs
            continue
        assert _mounts(gw)["batch"] == store_dir
        vol = next(v for v in gw["template"]["spec"]["volumes"] if v["name"] == "batch")
        if claim == "created":
            assert [p["spec"]["accessModes"] for p in pvcs] == [["ReadWriteMany"]]
            assert vol["persistentVolumeClaim"]["claimName"] == pvcs[0]["metadata"]["name"]
        else:
            assert not pvcs and vol["persistentVolumeClaim"]["claimName"] == claim


def test_every_owc_scrape_job_is_watched_by_the_target_down_alert():
    """prometheus-operator names a PodMonitor's job after its jobLabel's pod label (else
    "<namespace>/<podmonitor>"): the gateway's, engines' and controller's jobs must be the ones
    OwcScrapeTargetDown matches, or a crash-looping process is never alerted."""
    import re

    alerts = yaml.safe_load((PROMETHEUS_DIR / "rules" / "owc-alerts.yml").read_text())["groups"][0]["rules"]
    expr = next(r["expr"] for r in alerts if r.get("alert") == "OwcScrapeTargetDown")
    regex = re.search(r'job=~"([^"]+)"', expr).group(1)
    docs = rendered(CHART / "ci" / "gpt-oss-20b-autoscaled-values.yaml")  # controller and PodMonitors on
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in docs if d["kind"] == "Deployment"]
    rs = next(d for d in docs if d["kind"] == "RayService")["spec"]["rayClusterConfig"]
    pods += [g["template"]["metadata"]["labels"] for g in rs["workerGroupSpecs"]]
    for pm in (d for d in docs if d["kind"] == "PodMonitor"):
        sel = pm["spec"]["selector"]["matchLabels"]
        if sel.get("owc.io/component") not in ("gateway", "engine", "controller"):
            continue
        matched = [p for p in pods if all(p.get(k) == v for k, v in sel.items())]
        assert matched, pm["metadata"]["name"]
        label = pm["spec"].get("jobLabel")
        for p in matched:
            job = p.get(label) if label else f"llm/{pm['metadata']['name']}"
            assert job and re.fullmatch(regex, job), (pm["metadata"]["name"], job, regex)


@pytest.mark.parametrize("values", ["gpt-oss-20b-autoscaled-values.yaml", "gpt-oss-20b-1gpu-values.yaml"])
def test_no_pod_port_is_scraped_twice(values):
    """Two PodMonitors on one pod's port store every series twice (job differs): sum(rate(...))
    over them doubles, e.g. the Capacity dashboard's controller decisions."""
    docs = rendered(CHART / "ci" / values)
    pods = [d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    rs = [d for d in docs if d["kind"] == "RayService"]
    for d in rs:
        rc = d["spec"]["rayClusterConfig"]
        pods += [rc["headGroupSpec"]["template"], *(g["template"] for g in rc["workerGroupSpecs"])]

    def selects(sel: dict, labels: dict) -> bool:
        ok = all(labels.get(k) == v for k, v in sel.get("matchLabels", {}).items())
        for e in sel.get("matchExpressions", []):
            has = labels.get(e["key"])
            ok &= {"In": has in e.get("values", []), "NotIn": has not in e.get("values", []),
                   "Exists": has is not None, "DoesNotExist": has is None}[e["operator"]]
        return ok

    scraped: dict[tuple[str, str], list[str]] = {}
    for pm in (d for d in docs if d["kind"] == "PodMonitor"):
        for pod in pods:
            ports = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            if selects(pm["spec"]["selector"], pod["metadata"]["labels"]):
                for ep in pm["spec"]["podMetricsEndpoints"]:
                    if ep["port"] in ports:
                        key = (pod["metadata"]["labels"].get("owc.io/component"), ep["port"])
                        scraped.setdefault(key, []).append(pm["metadata"]["name"])
    assert scraped and not {k: v for k, v in scraped.items() if len(v) > 1}, scraped
