"""The gateway as a Ray Serve deployment. Each replica supervises one gateway process
(`cluster.gateway.main`) that serves the OpenAI API on the shared port (SO_REUSEPORT);
Serve's own HTTP proxy is disabled. Serve owns the gateway's lifecycle, health and replica
count; tokens take one hop, engine -> gateway process -> client, never a Ray actor call.
The replica feeds its process the engine endpoints it polls from the registry."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ray import serve

from cluster.config.schema import OwcConfig
from cluster.gateway.auth import KeyStore
from cluster.gateway.discovery import write_endpoints_file
from cluster.gateway.server import check_bind_policy
from cluster.metrics.targets import engine_groups, file_sd_dir, host_port, remove_targets, write_targets
from cluster.process import Command, ServerProcess, free_port

log = logging.getLogger(__name__)


class GatewayReplica:
    async def __init__(  # type: ignore[misc]  # Ray actors support async constructors
        self, *, config: dict[str, Any], registry: Any, _engines: list[Any] | None = None
    ) -> None:
        # _engines: the engine deployments, bound here so that Serve deploys them with the app.
        cfg = OwcConfig.model_validate(config)
        check_bind_policy(cfg.gateway, KeyStore.load(file=cfg.gateway.api_keys_file, env_var=cfg.gateway.api_keys_env))
        self._registry = registry
        self._dir = Path(tempfile.mkdtemp(prefix="owc-gw-"))
        (self._dir / "config.json").write_text(json.dumps(config))
        self._endpoints_file = str(self._dir / "endpoints.json")
        self._last: list[Any] | None = None
        self._sd_dir = file_sd_dir(cfg.monitoring.file_sd_dir)
        self._sd_name = uuid.uuid4().hex[:12]
        host = cfg.gateway.local_host
        self._metrics_port = free_port()
        await self._sync()
        command = Command(argv=[
            sys.executable, "-m", "cluster.gateway.main", "--config", str(self._dir / "config.json"),
            "--endpoints-file", self._endpoints_file, "--metrics-port", str(self._metrics_port),
            "--parent-pid", str(os.getpid()),
        ])
        self._proc = ServerProcess(command, log_path=self._dir / "gateway.log", host=host, port=cfg.gateway.port)
        self._proc.start()
        await self._proc.wait_ready(60)
        if self._sd_dir is not None:
            write_targets(self._sd_dir, f"gateway-{self._sd_name}", [
                {"targets": [host_port(host, self._metrics_port)], "labels": {"gateway_replica": self._sd_name}}
            ])
        self._task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def _sync(self) -> None:
        endpoints = await self._registry.snapshot.remote()
        if endpoints != self._last:
            write_endpoints_file(self._endpoints_file, endpoints)
            if self._sd_dir is not None:
                write_targets(self._sd_dir, f"engines-{self._sd_name}", engine_groups(endpoints))
            self._last = endpoints

    async def _sync_loop(self) -> None:
        while True:
            try:
                await self._sync()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # registry restarting: keep the last endpoints
                log.warning("registry poll failed: %s", e)
            await asyncio.sleep(0.5)

    async def check_health(self) -> None:
        if not self._proc.alive():
            raise RuntimeError(f"gateway process exited with code {self._proc.returncode}")
        if self._task.done():
            raise RuntimeError("endpoint sync stopped")

    async def __del__(self) -> None:
        self._task.cancel()
        if self._sd_dir is not None:
            remove_targets(self._sd_dir, f"gateway-{self._sd_name}")
            remove_targets(self._sd_dir, f"engines-{self._sd_name}")
        self._proc.stop(grace_s=10)
        shutil.rmtree(self._dir, ignore_errors=True)


def gateway_deployment(cfg: OwcConfig, env: dict[str, str] | None = None):
    options: dict[str, Any] = {"num_cpus": cfg.gateway.cpus}
    if cfg.gateway.ray_resources:
        options["resources"] = dict(cfg.gateway.ray_resources)
    if env:
        options["runtime_env"] = {"env_vars": env}
    return serve.deployment(GatewayReplica).options(
        name="owc-gateway",
        num_replicas=cfg.gateway.replicas,
        ray_actor_options=options,
        max_ongoing_requests=100,
        health_check_period_s=5,
        graceful_shutdown_timeout_s=20,
    )
