"""values.schema.json of the Helm chart, generated: the chart's own keys, and under `owc`
the owc config schema itself (cluster/config/schema.py), so that `helm install` rejects a
typo anywhere — in chart values or in the model config — before anything renders; and
files/config-defaults.yaml, the config defaults the templates fill in.
`python -m cluster.config.chart_schema --write`; a test keeps the committed files current."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cluster.config.schema import OwcConfig
from cluster.metrics.buckets import TTFT_BUCKETS

CHART = Path(__file__).resolve().parents[2] / "helm" / "owc"


def obj(props: dict[str, Any], required: list[str] | None = None, description: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    if description:
        out["description"] = description
    return out


STR = {"type": "string"}
BOOL = {"type": "boolean"}
INT = {"type": "integer", "minimum": 0}
ANY_MAP = {"type": "object"}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
LIST = {"type": "array"}
RESOURCES = obj({"requests": ANY_MAP, "limits": ANY_MAP})


def values_schema() -> dict[str, Any]:
    owc = OwcConfig.model_json_schema(ref_template="#/$defs/{model}")
    defs = owc.pop("$defs", {})
    # The chart supplies these itself (gateway bind, keys file, engine network, caches).
    owc.pop("required", None)
    owc["properties"]["models"].pop("minProperties", None)  # empty: the chart's defaultModel
    _accept_int_gateway_replicas(defs)
    pods = {"resources": RESOURCES, "nodeSelector": STR_MAP, "tolerations": LIST}
    schema = obj({
        "owc": owc,
        "defaultModel": obj({"name": STR, "config": {"$ref": "#/$defs/ModelConfig"}}, required=["name", "config"]),
        "nameOverride": STR,
        "fullnameOverride": STR,
        "image": obj({"repository": STR, "tag": STR, "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                      "pullSecrets": {"type": "array", "items": STR}}),
        "rayVersion": STR,
        "head": obj(pods),
        "gatewayWorkers": obj(pods),
        "engineWorkers": obj({
            "gpusPerNode": {"type": "integer", "minimum": 1}, "gpuResourceName": STR,
            "memoryPerGpu": {"type": "string", "pattern": "^[0-9]+Gi$"}, "cpuMemory": STR,
            "port": {"type": "integer", "minimum": 1024, "maximum": 65534}, "shmSize": STR,
            "nodeSelector": STR_MAP, "tolerations": LIST,
        }),
        "service": obj({"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "port": INT, "annotations": STR_MAP}),
        "ingress": obj({"enabled": BOOL, "className": STR, "host": STR, "annotations": STR_MAP,
                        "tls": obj({"enabled": BOOL, "secretName": STR}),
                        # 0: the gateway's request_timeout_s + 30; the ALB maximum is 4000 s.
                        "idleTimeoutSeconds": {"type": "integer", "minimum": 0, "maximum": 6000}}),
        "apiKeys": obj({"keys": STR_MAP, "existingSecret": STR, "secretKey": STR}),
        "engineKey": obj({"existingSecret": STR, "secretKey": STR}),
        "modelCache": obj({"enabled": BOOL, "existingClaim": STR, "size": STR, "storageClass": STR,
                           "accessModes": {"type": "array", "items": STR}, "mountPath": STR}),
        "batchStore": obj({"volume": {"enum": ["modelCache", "claim"]}, "existingClaim": STR, "size": STR,
                           "storageClass": STR}),
        "hubToken": obj({"existingSecret": STR, "secretKey": STR}),
        "gcsFaultTolerance": obj({"enabled": BOOL, "redisAddress": STR, "externalStorageNamespace": STR,
                                  "redisPasswordSecret": obj({"name": STR, "key": STR})}),
        "tenancyStore": obj({
            "mode": {"enum": ["none", "internal", "external"]},
            "onFailure": {"enum": ["open", "closed", "local"]},
            "external": obj({"url": {"type": "string", "pattern": "^(rediss?://.*)?$"}, "existingSecret": STR,
                             "secretKey": STR}),
            "internal": obj({"image": obj({"repository": STR, "tag": STR,
                                           "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}}),
                             "resources": RESOURCES, "storage": obj({"size": STR, "storageClass": STR})}),
        }),
        "drain": obj({"endpointDelaySeconds": INT, "serveStopSeconds": INT, "exitSeconds": INT}),
        "upgradeStrategy": {"enum": ["NewCluster", "None"]},
        "monitoring": obj({
            # The rules' SLO bucket: a bound of the gateway's TTFT histogram, else the SLO rules read nothing.
            "ttftSloSeconds": {"type": "number", "enum": list(TTFT_BUCKETS)},
            "podMonitors": obj({"enabled": BOOL, "interval": STR, "labels": STR_MAP}),
            "prometheusRule": obj({"enabled": BOOL, "labels": STR_MAP}),
            "grafanaDashboards": obj({"enabled": BOOL, "labels": STR_MAP}),
        }),
        "networkPolicy": obj({"enabled": BOOL, "operatorNamespace": STR, "prometheusNamespace": STR, "gatewayFrom": LIST}),
        "podDisruptionBudget": obj({"enabled": BOOL}),
        "tests": obj({"image": STR}),
        "controller": obj({
            "enabled": BOOL, "replicas": {"type": "integer", "minimum": 1}, "prometheusUrl": STR,
            "interval": {"type": "number", "exclusiveMinimum": 0}, "resources": RESOURCES,
        }),
        "global": ANY_MAP,
    })
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "$defs": defs}


def _accept_int_gateway_replicas(defs: dict[str, Any]) -> None:
    """gateway.replicas is `{min, max, initial}` or an int (a fixed count: GatewayReplicas
    reads it before validation), which the model's own JSON schema does not say."""
    prop = defs.get("GatewayConfig", {}).get("properties", {}).get("replicas")
    if not prop or "$ref" not in prop:
        return
    ref = prop.pop("$ref")
    bounds = {k: v for k, v in defs.get("GatewayReplicas", {}).get("properties", {}).get("min", {}).items()
              if k in ("minimum", "maximum")}
    prop["anyOf"] = [{"type": "integer", **bounds}, {"$ref": ref}]


def render() -> str:
    return json.dumps(values_schema(), indent=2, sort_keys=False) + "\n"


DEFAULTS_FILE = CHART / "files" / "config-defaults.yaml"


def config_defaults() -> dict[str, Any]:
    """The owc config's defaults that the chart's templates fill in where `owc:` leaves a
    setting out (gateway pods, grace periods, the load balancer's idle timeout), from the
    config models themselves, so that the chart and `owc serve` never disagree."""
    from cluster.config.autoscaling import Autoscaling
    from cluster.config.gateway import GatewayAutoscaling, GatewayReplicas, Limits

    replicas = GatewayReplicas()
    return {
        "gateway": {
            "replicas": {"min": replicas.min, "max": replicas.max},
            "drain_timeout_s": GatewayAutoscaling().drain_timeout_s,
            "request_timeout_s": Limits().request_timeout_s,
            "keepalive_timeout_s": Limits().keepalive_timeout_s,
        },
        "engine": {"drain_timeout_s": Autoscaling().drain_timeout_s},
    }


def render_defaults() -> str:
    import yaml

    head = ("# Generated from the owc config schema by `python -m cluster.config.chart_schema --write`\n"
            "# (make chart-files): the defaults the chart's templates fill in. Do not edit.\n")
    return head + yaml.safe_dump(config_defaults(), sort_keys=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    if a.write:
        (CHART / "values.schema.json").write_text(render())
        DEFAULTS_FILE.write_text(render_defaults())
    else:
        print(render(), end="")


if __name__ == "__main__":
    main()
