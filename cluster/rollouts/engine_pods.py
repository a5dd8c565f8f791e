"""Engine replicas as `owc controller` finds them on Kubernetes, for a rollout's conformance
gate (cluster.rollouts.gate): the release's engine pods listed through the API server, each
asked on its engine port's /health which model and version it serves.

The controller runs outside Ray, so the replica registry the gateways read (a Serve
deployment) is out of its reach; the Kubernetes API is not. A pod holds one engine replica
at most (the engine port is fixed, `engineWorkers.port`), but a pod does not say which
version: the stable and candidate replicas share the model's worker group (unless the
candidate has an image, and so a group, of its own). The engine does: owc's EngineGuard
adds ``x-owc-model`` and ``x-owc-version`` to /health, which needs no credential. A pod
whose engine is not up (starting, not placed yet) answers nothing and is skipped."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from cluster.engine.guard import MODEL_HEADER, VERSION_HEADER

log = logging.getLogger(__name__)
PORT_NAME = "engine"  # the chart's name of the engine container port
PROBE_TIMEOUT_S = 2.0


def http_identity(url: str) -> tuple[str, str] | None:
    """(model, version) an engine's /health names; None when it does not answer 200 or names none."""
    import httpx

    try:
        r = httpx.get(url + "/health", timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError:
        return None
    model, version = r.headers.get(MODEL_HEADER), r.headers.get(VERSION_HEADER)
    if r.status_code != 200 or not model or not version:
        return None
    return unquote(model), unquote(version)


def pod_urls(pods: Any) -> list[str]:
    """The engine URL (``http://<pod IP>:<engine port>``) of each running, ready pod listed."""
    out = []
    for pod in pods.items:
        status, spec = pod.status, pod.spec
        if status is None or status.phase != "Running" or not status.pod_ip or pod.metadata.deletion_timestamp:
            continue
        ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
        port = next((p.container_port for c in spec.containers for p in c.ports or [] if p.name == PORT_NAME), None)
        if ready and port:
            host = f"[{status.pod_ip}]" if ":" in status.pod_ip else status.pod_ip  # an IPv6 pod IP
            out.append(f"http://{host}:{port}")
    return sorted(out)


class EnginePods:
    def __init__(self, api: Any, namespace: str, selector: str, *,
                 identify: Callable[[str], tuple[str, str] | None] = http_identity):
        """``api``: a kubernetes.client.CoreV1Api (``list_namespaced_pod``); ``selector``: the
        release's engine pods (the chart: ``app.kubernetes.io/instance=<release>,owc.io/component=engine``)."""
        self._api, self._ns, self._selector = api, namespace, selector
        self._identify = identify

    def replica_urls(self, model: str) -> dict[str, str]:
        """version -> one engine URL of ``model`` serving it (stable, candidate; those found)."""
        pods = self._api.list_namespaced_pod(self._ns, label_selector=self._selector)
        out: dict[str, str] = {}
        for url in pod_urls(pods):
            who = self._identify(url)
            if who is not None and who[0] == model:
                out.setdefault(who[1], url)
            if len(out) == 2:
                break
        return out
