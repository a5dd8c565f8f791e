"""Where a replica target takes effect.

- ``RayServeActuator``: a local (or any reachable) Ray Serve application started with
  ``external_scaler_enabled``; the target goes to the Serve controller, which starts or
  stops replicas without touching the others.
- ``KubernetesActuator``: patches the RayService's ``serveConfigV2`` (the engine
  deployment's ``num_replicas`` in the owc application), with the object's
  resourceVersion so that a concurrent change (a ``helm upgrade``) is never overwritten;
  KubeRay applies it and the Ray autoscaler adds or removes GPU worker pods.
  Ownership: the controller owns ``applications[owc].deployments[engine-*].num_replicas``
  (and, with gateway autoscaling, ``deployments[owc-gateway].num_replicas``) and nothing
  else; the chart renders those entries from the live object (``lookup``), so an upgrade
  keeps the controller's counts. What runs comes from the RayService status,
  which carries each Serve deployment's status but no replica count (see ``replicas``).
- The same two carry the gateway's replica count (key ``owc-gateway``: the `owc-gateway`
  deployment of the owc application; on Kubernetes its ``num_replicas`` in the same
  ``deployments`` list, the config's ``gateway.replicas`` start before the controller wrote one).
- ``LeaseElector`` (cluster.capacity.election): a coordination.k8s.io Lease, so that of
  several controller pods only the holder acts.

Scale-down drains in every case: the engine replica being stopped first leaves routing
(``draining`` in the registry), then waits for its in-flight requests (cluster.engine.replica);
a gateway process being stopped takes no new connections and finishes its open requests
(``gateway.autoscaling.drain_timeout_s``).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import yaml

from cluster.capacity.election import LeaseElector  # noqa: F401  (here before it had its module)
from cluster.capacity.gateway_policy import GATEWAY
from cluster.engine.names import deployment_name

log = logging.getLogger(__name__)
APP_NAME = "owc"


class Actuator(Protocol):
    """``model``: a served model's name (its engine deployment), or ``owc-gateway``."""

    def replicas(self, model: str) -> tuple[int, int | None]:
        """(target in force, replicas running; None where the actuator cannot tell)."""
        ...

    def scale(self, model: str, target: int) -> None: ...


def serve_deployment(key: str) -> str:
    """The Serve deployment of a controller target: the gateway's, or the model's engine."""
    return GATEWAY if key == GATEWAY else deployment_name(key)


class RayServeActuator:
    def __init__(self, *, controller: Any = None, app_name: str = APP_NAME):
        if controller is None:
            import ray
            from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

            controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        self._controller = controller
        self._app = app_name

    def replicas(self, model: str) -> tuple[int, int]:
        from ray import serve

        app = serve.status().applications[self._app]
        dep = app.deployments[serve_deployment(model)]
        states = {str(getattr(k, "value", k)): v for k, v in dep.replica_states.items()}
        running = states.get("RUNNING", 0)
        target = sum(v for k, v in states.items() if k in ("RUNNING", "STARTING", "UPDATING", "RECOVERING",
                                                            "PENDING_MIGRATION"))
        return target, running

    def scale(self, model: str, target: int) -> None:
        import ray
        from ray.serve._private.common import DeploymentID

        ray.get(self._controller.update_deployment_replicas.remote(
            DeploymentID(name=serve_deployment(model), app_name=self._app), target))


class Conflict(Exception):
    """The object changed since it was read; retry on the next loop."""


class KubernetesActuator:
    GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"

    def __init__(self, *, api: Any, namespace: str, name: str, app_name: str = APP_NAME):
        self._api = api  # kubernetes.client.CustomObjectsApi
        self._ns, self._name, self._app = namespace, name, app_name

    def _get(self) -> dict:
        return self._api.get_namespaced_custom_object(self.GROUP, self.VERSION, self._ns, self.PLURAL, self._name)

    def _app_of(self, serve_cfg: dict) -> dict:
        for app in serve_cfg.get("applications", []):
            if app.get("name") == self._app:
                return app
        raise KeyError(f"RayService {self._ns}/{self._name} has no Serve application {self._app!r}")

    def replicas(self, model: str) -> tuple[int, int | None]:
        """The target is the engine (or gateway) deployment's ``num_replicas`` in
        ``serveConfigV2`` (the model's, or the gateway's, initial count before the controller
        ever wrote one). KubeRay's status has no
        replica count (``status.activeServiceStatus.applicationStatuses.<app>
        .serveDeploymentStatuses.<deployment>`` is only ``status`` and ``message``), so the
        running count is the target only when that status is of this very spec
        (``observedGeneration`` == ``metadata.generation``: KubeRay has applied it) and says
        the application RUNNING and the deployment HEALTHY (Serve has all target replicas
        up; it turns DEPLOYING/UPSCALING/DOWNSCALING on applying a new count); otherwise
        None (unknown)."""
        obj = self._get()
        target = self._target(self._app_of(yaml.safe_load(obj["spec"]["serveConfigV2"])), model)
        return target, (target if self._healthy(obj, serve_deployment(model)) else None)

    def _target(self, app: dict, model: str) -> int:
        name = serve_deployment(model)
        for d in app.get("deployments", []):
            if d.get("name") == name and "num_replicas" in d:
                return int(d["num_replicas"])
        cfg = app["args"]["config"]
        m = (cfg.get("gateway") or {}).get("replicas", 1) if model == GATEWAY else cfg["models"][model].get("replicas", {})
        if isinstance(m, int):
            return m
        start = m.get("initial") if m.get("initial") is not None else max(m.get("min", 1), 1)
        return int(start)

    def _healthy(self, obj: dict, deployment: str) -> bool:
        status = obj.get("status") or {}
        generation = (obj.get("metadata") or {}).get("generation")
        if generation is None or status.get("observedGeneration") != generation:
            return False
        app = ((status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}).get(self._app) or {}
        dep = (app.get("serveDeploymentStatuses") or {}).get(deployment) or {}
        return app.get("status") == "RUNNING" and dep.get("status") == "HEALTHY"

    def scale(self, model: str, target: int) -> None:
        from kubernetes.client.exceptions import ApiException

        obj = self._get()
        serve_cfg = yaml.safe_load(obj["spec"]["serveConfigV2"])
        app = self._app_of(serve_cfg)
        name = serve_deployment(model)
        deps = app.setdefault("deployments", [])
        entry = next((d for d in deps if d.get("name") == name), None)
        if entry is None:
            entry = {"name": name}
            deps.append(entry)
        entry["num_replicas"] = int(target)
        body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "spec": {"serveConfigV2": yaml.safe_dump(serve_cfg, sort_keys=False)}}
        try:
            self._api.patch_namespaced_custom_object(self.GROUP, self.VERSION, self._ns, self.PLURAL, self._name, body)
        except ApiException as e:
            if e.status == 409:
                raise Conflict(str(e.reason)) from None
            raise
