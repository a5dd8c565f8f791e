"""The Helm chart with real binaries: helm lint/template for every helm/owc/ci values
file; impossible values fail; built-in objects pass kubernetes-validate --strict (1.30 and
1.35); custom resources pass their CRDs (../shared/crds) with unknown fields rejected; the
embedded Serve config passes Ray's Serve schema and `owc config validate`; checkov finds
nothing outside helm/owc/.checkov.yaml's skip list."""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cluster.config.chart_schema import render as render_values_schema
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
    r = subprocess.run([sys.executable, "-m", "cluster.cli", "config", "validate", str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
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
        assert g["minReplicas"] == r.get("min", 1) and g["maxReplicas"] == r.get("max", 1)
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
    release's gateway pods and the Prometheus namespace, nothing else."""
    docs = rendered(values)
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
            assert peer["podSelector"]["matchLabels"].get("owc.io/component") == "gateway", peer
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
