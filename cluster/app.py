"""The owc Ray Serve application graph: registry, one engine deployment per model (two
during a rollout: stable and candidate), the
gateway (ingress). The same graph runs under `owc serve` and in a KubeRay RayService.
Deployments receive the validated config objects (pydantic models pickle); JSON appears
only where a process starts (the gateway process's config file)."""

from __future__ import annotations

from typing import Any

from cluster.config.rollout import candidate_model
from cluster.config.schema import OwcConfig
from cluster.engine.launcher import Launcher, vllm_launcher
from cluster.engine.replica import engine_deployment
from cluster.gateway.edge.deployment import gateway_deployment
from cluster.discovery.registry import EndpointRegistry

APP_NAME = "owc"


def build_application(
    cfg: OwcConfig, *, launcher: Launcher = vllm_launcher, gateway_env: dict[str, str] | None = None
) -> Any:
    registry = EndpointRegistry.bind()
    engines = [
        engine_deployment(name, m).bind(
            served_name=name,
            model_config=m,
            cache_dir=cfg.model_cache_dir,
            registry=registry,
            launcher=launcher,
            network=cfg.engine_network,
        )
        for name, m in cfg.models.items()
    ]
    engines += [  # during a rollout, the candidate version's own deployment (docs/rollouts.md)
        engine_deployment(name, candidate_model(m), "candidate", pin=m.candidate.ray_resources).bind(
            served_name=name,
            model_config=candidate_model(m),
            cache_dir=cfg.model_cache_dir,
            registry=registry,
            launcher=launcher,
            network=cfg.engine_network,
            version="candidate",
        )
        for name, m in cfg.models.items() if m.candidate is not None
    ]
    # Engines are bound as arguments so Serve deploys them with the gateway's app.
    return gateway_deployment(cfg, gateway_env).bind(config=cfg, registry=registry, _engines=engines)


def app_builder(args: dict[str, Any]) -> Any:
    """Entry for Serve config files / RayService `import_path: cluster.app:app_builder`;
    `args.config` holds the owc config (a mapping, or a path to YAML)."""
    from cluster.config.loader import load_config, parse_config

    raw = args.get("config")
    cfg = load_config(raw) if isinstance(raw, str) or raw is None else parse_config(raw, "serve args")
    return build_application(cfg)
