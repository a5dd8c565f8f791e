"""The gateway as a Ray Serve deployment: each replica serves the OpenAI API itself on the
shared port (SO_REUSEPORT), with Serve's own HTTP proxy disabled, so Serve owns the
gateway's lifecycle and replica count while requests take one hop to an engine."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prometheus_client import CollectorRegistry
from ray import serve

from cluster.config.schema import OwcConfig
from cluster.gateway.app import build_app
from cluster.gateway.auth import KeyStore
from cluster.gateway.discovery import PollingEndpoints
from cluster.gateway.server import bind_socket, check_bind_policy, make_server

log = logging.getLogger(__name__)


class GatewayReplica:
    async def __init__(  # type: ignore[misc]
        self, *, config: dict[str, Any], registry: Any, _engines: list[Any] | None = None
    ) -> None:
        # _engines: handles to the engine deployments, bound so they deploy with the app.
        cfg = OwcConfig.model_validate(config)
        keys = KeyStore.load(file=cfg.gateway.api_keys_file, env_var=cfg.gateway.api_keys_env)
        check_bind_policy(cfg.gateway, keys)

        async def fetch():
            return await registry.snapshot.remote()

        source = PollingEndpoints(fetch, period_s=0.5)
        app = build_app(config=cfg, endpoints=source, keys=keys, registry=CollectorRegistry())
        self._sock = bind_socket(cfg.gateway.host, cfg.gateway.port)
        self._server = make_server(app)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.05)
        log.info("gateway listening on %s:%s", cfg.gateway.host, cfg.gateway.port)

    async def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError("gateway server stopped")

    async def __del__(self) -> None:
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, timeout=10)
        except (asyncio.TimeoutError, Exception) as e:  # shutting down regardless
            log.debug("gateway stop: %s", e)
        self._sock.close()


def gateway_deployment(cfg: OwcConfig):
    return serve.deployment(GatewayReplica).options(
        name="owc-gateway",
        num_replicas=cfg.gateway.replicas,
        ray_actor_options={"num_cpus": cfg.gateway.cpus},
        max_ongoing_requests=100,
        health_check_period_s=5,
        graceful_shutdown_timeout_s=15,
    )
