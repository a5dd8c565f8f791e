"""The chart with a rollout (issue 30, docs/rollouts.md): a values file whose model has a
candidate renders a RayService valid against the vendored KubeRay CRD whose owc config
carries the candidate (cluster.app builds engine-<model>-candidate from it), the candidate's
pods within the engine group's maxReplicas, the rollouts' ConfigMap that `owc controller`
writes and every gateway pod reads (with the least RBAC for each), and an upgrade that
keeps the candidate's controller-set num_replicas as the engines'."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.chart.test_chart import CHART, _render_against_live, crd_schema, helm, render_values

VALUES = yaml.safe_load((CHART / "ci" / "rollout-values.yaml").read_text())


def _docs(tmp_path: Path, values: dict = VALUES) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in render_values(tmp_path, values)}


def _group(rs: dict, name: str) -> dict:
    groups = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return next(g for g in groups if g["groupName"] == name)


def test_a_candidate_renders_a_valid_rayservice_and_the_rollouts_configmap(tmp_path):
    docs = _docs(tmp_path)
    rs = docs[("RayService", "owc")]
    jsonschema.Draft7Validator(crd_schema("RayService", "v1")).validate(rs)
    cfg = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["config"]
    assert cfg["models"]["tiny-llama"]["candidate"] == VALUES["owc"]["models"]["tiny-llama"]["candidate"]
    assert _group(rs, "engine-tiny-llama")["maxReplicas"] == 4  # the model's 2 and the candidate's 2
    (cm_name,) = [n for k, n in docs if k == "ConfigMap" and n.startswith("owc-rollouts-")]
    assert re.fullmatch(r"owc-rollouts-[0-9a-f]{8}", cm_name) and "data" not in docs[("ConfigMap", cm_name)]
    # the controller writes it (its flag names it; get/update on that one ConfigMap)
    (c,) = docs[("Deployment", "owc-controller")]["spec"]["template"]["spec"]["containers"]
    assert c["command"][c["command"].index("--rollout-configmap") + 1] == cm_name
    rule = {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [cm_name], "verbs": ["get", "update"]}
    assert rule in docs[("Role", "owc-controller")]["rules"]
    # every gateway pod reads it with a service account that may do nothing else
    gw = _group(rs, "gateway")["template"]["spec"]
    assert gw["serviceAccountName"] == "owc-gateway" and gw["automountServiceAccountToken"] is True
    env = {e["name"]: e.get("value") for e in gw["containers"][0]["env"]}
    assert env["OWC_ROLLOUT_CONFIGMAP"] == f"llm/{cm_name}"
    assert docs[("Role", "owc-gateway-rollouts")]["rules"] == [rule]
    binding = docs[("RoleBinding", "owc-gateway-rollouts")]
    assert binding["subjects"][0]["name"] == "owc-gateway" and binding["roleRef"]["name"] == "owc-gateway-rollouts"
    # engine pods get no token
    assert _group(rs, "engine-tiny-llama")["template"]["spec"]["automountServiceAccountToken"] is False


def test_a_changed_candidate_is_a_new_rollout_and_no_candidate_no_rollout_objects(tmp_path):
    def cm(values: dict) -> set[str]:
        return {n for (k, n) in _docs(tmp_path, values) if k == "ConfigMap" and n.startswith("owc-rollouts")}

    changed = copy.deepcopy(VALUES)
    changed["owc"]["models"]["tiny-llama"]["candidate"]["engine_kwargs"]["max_num_seqs"] = 32
    first, second = cm(VALUES), cm(changed)
    assert len(first) == len(second) == 1 and first != second
    plain = copy.deepcopy(VALUES)
    del plain["owc"]["models"]["tiny-llama"]["candidate"]
    plain["controller"] = {"enabled": False}  # nothing else to control here
    docs = _docs(tmp_path, plain)
    assert not {n for (k, n) in docs if "rollouts" in n}
    gw = _group(docs[("RayService", "owc")], "gateway")["template"]["spec"]
    assert gw["automountServiceAccountToken"] is False and "serviceAccountName" not in gw


def test_an_adapter_candidate_gets_the_rollouts_configmap_and_the_controller(tmp_path):
    """adapters.<name>.candidate alone: the same ConfigMap, controller flag and gateway access as
    a model's candidate (owc controller analyses it under the adapter's name); a changed adapter
    candidate is a new rollout; no candidate deployment (the LoRA runs on the model's engines)."""
    def values(source: str) -> dict:
        v = copy.deepcopy(VALUES)
        m = v["owc"]["models"]["tiny-llama"]
        del m["candidate"]
        m["adapters"] = {"support": {"source": "/models/support-v1", "candidate": {"source": source}}}
        return v

    docs = _docs(tmp_path, values("/models/support-v2"))
    (cm_name,) = [n for k, n in docs if k == "ConfigMap" and n.startswith("owc-rollouts-")]
    (c,) = docs[("Deployment", "owc-controller")]["spec"]["template"]["spec"]["containers"]
    assert c["command"][c["command"].index("--rollout-configmap") + 1] == cm_name
    rs = docs[("RayService", "owc")]
    gw = _group(rs, "gateway")["template"]["spec"]
    assert {e["name"]: e.get("value") for e in gw["containers"][0]["env"]}["OWC_ROLLOUT_CONFIGMAP"] == f"llm/{cm_name}"
    from cluster.config.loader import parse_config
    from cluster.config.rollout import rollout_targets

    cfg = parse_config(yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["config"])
    assert rollout_targets(cfg) == {"support": ("tiny-llama", "support")}  # what owc controller analyses
    assert "engine-tiny-llama-candidate" not in yaml.safe_dump(rs)
    other = {n for (k, n) in _docs(tmp_path, values("/models/support-v3")) if k == "ConfigMap" and n.startswith("owc-rollouts")}
    assert other and cm_name not in other


def test_the_conformance_gate_gives_the_controller_engine_pods_the_key_and_the_engine_port(tmp_path):
    """With rollout.conformance on (the default) the controller lists the engine pods (its
    --engine-pods selects the engine groups' pods, not the gateways'), holds the engine
    credential (its Secret mounted as a file) and may reach the engine port; with it off,
    none of that."""
    docs = _docs(tmp_path)
    rs = docs[("RayService", "owc")]
    (c,) = docs[("Deployment", "owc-controller")]["spec"]["template"]["spec"]["containers"]
    selector = dict(kv.split("=") for kv in c["command"][c["command"].index("--engine-pods") + 1].split(","))
    assert selector.items() <= _group(rs, "engine-tiny-llama")["template"]["metadata"]["labels"].items()
    assert not selector.items() <= _group(rs, "gateway")["template"]["metadata"]["labels"].items()
    assert c["command"][c["command"].index("--engine-key-file") + 1] == "/etc/owc/engine-key/engine-key"
    pod = docs[("Deployment", "owc-controller")]["spec"]["template"]["spec"]
    assert {"name": "engine-key", "mountPath": "/etc/owc/engine-key", "readOnly": True} in c["volumeMounts"]
    assert {"name": "engine-key", "secret": {"secretName": "owc-engine-key", "items": [
        {"key": "engine-key", "path": "engine-key"}]}} in pod["volumes"]  # a file, not an env var (checkov CKV_K8S_35)
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]} in docs[("Role", "owc-controller")]["rules"]
    peers = [p["podSelector"]["matchLabels"]["owc.io/component"] for r in docs[("NetworkPolicy", "owc-engine")]["spec"]["ingress"]
             for p in r["from"] if "podSelector" in p]
    assert peers == ["gateway", "controller"]
    off = copy.deepcopy(VALUES)
    off["owc"]["models"]["tiny-llama"]["rollout"]["conformance"] = False
    docs = _docs(tmp_path, off)
    (c,) = docs[("Deployment", "owc-controller")]["spec"]["template"]["spec"]["containers"]
    assert "--engine-pods" not in c["command"] and "engine-key" not in {v["name"] for v in c["volumeMounts"]}
    assert all("pods" not in r["resources"] for r in docs[("Role", "owc-controller")]["rules"])
    assert [p["podSelector"]["matchLabels"]["owc.io/component"] for r in docs[("NetworkPolicy", "owc-engine")]["spec"]["ingress"]
            for p in r["from"] if "podSelector" in p] == ["gateway"]


def test_a_candidate_image_runs_in_a_worker_group_of_its_own(tmp_path):
    """candidate.image: the candidate's engines get a worker group with that image, offering Ray
    no CPU and one custom resource; the Serve config's candidate.ray_resources names that
    resource, so engine-<model>-candidate (built from the rendered config) runs there only,
    and stable's replicas (which need CPUs) never do. The model's group no longer makes room
    for the candidate. Valid against the vendored CRD; a PDB for the new group."""
    from cluster.config.loader import parse_config
    from cluster.config.rollout import candidate_model
    from cluster.engine.replica import engine_deployment

    values = copy.deepcopy(VALUES)
    values["owc"]["models"]["tiny-llama"]["candidate"]["image"] = "registry.example.com/owc:vllm-next"
    docs = _docs(tmp_path, values)
    rs = docs[("RayService", "owc")]
    jsonschema.Draft7Validator(crd_schema("RayService", "v1")).validate(rs)
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load(rs["spec"]["serveConfigV2"]))  # KubeRay can apply it
    cand, stable = _group(rs, "engine-tiny-llama-candidate"), _group(rs, "engine-tiny-llama")
    assert cand["template"]["spec"]["containers"][0]["image"] == "registry.example.com/owc:vllm-next"
    assert stable["template"]["spec"]["containers"][0]["image"] == docs[("Deployment", "owc-controller")]["spec"][
        "template"]["spec"]["containers"][0]["image"]
    assert cand["rayStartParams"] == {"num-cpus": "0", "resources": '"{\\"owc-engine-tiny-llama-candidate\\": 1}"'}
    assert (cand["minReplicas"], cand["maxReplicas"], stable["maxReplicas"]) == (1, 2, 2)
    assert cand["template"]["metadata"]["labels"]["owc.io/component"] == "engine"  # the gate, monitoring, the policy
    cfg = parse_config(yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["config"])
    m = cfg.models["tiny-llama"]
    assert m.candidate.ray_resources == {"owc-engine-tiny-llama-candidate": 1}
    rc = engine_deployment("tiny-llama", candidate_model(m), "candidate", pin=m.candidate.ray_resources)._replica_config
    assert rc.placement_group_bundles == [{"owc-engine-tiny-llama-candidate": 1.0}] and rc.ray_actor_options["num_cpus"] == 0
    assert engine_deployment("tiny-llama", m)._replica_config.placement_group_bundles == [{"CPU": 2.0}]  # not there
    pdb = docs[("PodDisruptionBudget", "owc-engine-tiny-llama-candidate")]
    assert pdb["spec"]["selector"]["matchLabels"]["owc.io/engine-group"] == "engine-tiny-llama-candidate"
    # without an image (the rollout values): one group, room for the candidate, no ray_resources
    rs = _docs(tmp_path)[("RayService", "owc")]
    assert [g["groupName"] for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]] == ["gateway", "engine-tiny-llama"]
    assert "ray_resources" not in yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["config"]["models"][
        "tiny-llama"]["candidate"]


def test_a_candidate_without_the_controller_is_refused(tmp_path):
    values = copy.deepcopy(VALUES)
    values["controller"] = {"enabled": False}
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(values))
    r = helm("template", "owc", str(CHART), "--namespace", "llm", "-f", str(path))
    assert r.returncode != 0 and "rollout analysis runs in owc controller" in r.stderr


@pytest.mark.parametrize("live", [
    [{"name": "engine-tiny-llama", "num_replicas": 1}, {"name": "engine-tiny-llama-candidate", "num_replicas": 2}],
    [{"name": "engine-tiny-llama", "num_replicas": 2}, {"name": "engine-tiny-llama-candidate", "num_replicas": 1}],
])
def test_an_upgrade_keeps_the_candidates_controller_set_replicas(tmp_path, live):
    """The controller scales the version that lost down (to 1: Serve's config has no 0): an upgrade keeps it."""
    docs = _render_against_live(tmp_path, VALUES, live)
    rs = next(d for d in docs if d["kind"] == "RayService")
    (app,) = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    assert app["deployments"] == live
    jsonschema.Draft7Validator(crd_schema("RayService", "v1")).validate(rs)
