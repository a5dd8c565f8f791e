"""values.schema.json of the Helm chart, generated: the chart's own keys, and under `owc`
the owc config schema itself (cluster/config/schema.py), so that `helm install` rejects a
typo anywhere — in chart values or in the model config — before anything renders.
`python -m cluster.config.chart_schema --write`; a test keeps the committed file current."""

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
                        "tls": obj({"enabled": BOOL, "secretName": STR})}),
        "apiKeys": obj({"keys": STR_MAP, "existingSecret": STR, "secretKey": STR}),
        "engineKey": obj({"existingSecret": STR, "secretKey": STR}),
        "modelCache": obj({"enabled": BOOL, "existingClaim": STR, "size": STR, "storageClass": STR,
                           "accessModes": {"type": "array", "items": STR}, "mountPath": STR}),
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


def render() -> str:
    return json.dumps(values_schema(), indent=2, sort_keys=False) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    if a.write:
        (CHART / "values.schema.json").write_text(render())
    else:
        print(render(), end="")


if __name__ == "__main__":
    main()
