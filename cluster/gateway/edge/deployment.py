"""The gateway as a Ray Serve deployment. Each replica supervises one gateway process
(`cluster.gateway.main`) that serves the OpenAI API on the shared port (SO_REUSEPORT);
Serve's own HTTP proxy is disabled. Serve owns the gateway's lifecycle, health and replica
count; tokens take one hop, engine -> gateway process -> client, never a Ray actor call.
The replica feeds its process the engine endpoints from the registry
(cluster.discovery.handoff)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ray import serve

from cluster.config.schema import OwcConfig
from cluster.discovery.handoff import EndpointSync
from cluster.metrics.targets import file_sd_dir, host_port, remove_targets, write_targets
from cluster.process import Command, ServerProcess, free_port


class GatewayReplica:
    async def __init__(  # type: ignore[misc]  # Ray actors support async constructors
        self, *, config: OwcConfig, registry: Any, _engines: list[Any] | None = None
    ) -> None:
        # _engines: the engine deployments, bound here so that Serve deploys them with the app.
        # The gateway process checks the bind policy (it is the one that binds).
        self._dir = Path(tempfile.mkdtemp(prefix="owc-gw-"))
        config_file = self._dir / "config.json"
        config_file.write_text(config.model_dump_json())  # the process edge: JSON
        self._sd_dir = file_sd_dir(config.monitoring.file_sd_dir)
        self._sd_name = uuid.uuid4().hex[:12]
        self._sync = EndpointSync(registry=registry, endpoints_file=str(self._dir / "endpoints.json"),
                                  sd_dir=self._sd_dir, sd_name=self._sd_name)
        host = config.gateway.local_host
        metrics_port = config.gateway.metrics_port or free_port()
        await self._sync.sync()
        command = Command(argv=[
            sys.executable, "-m", "cluster.gateway.main", "--config", str(config_file),
            "--endpoints-file", self._sync.endpoints_file, "--metrics-port", str(metrics_port),
            "--parent-pid", str(os.getpid()),
        ])
        # Beside the engines' logs, not in the process's own directory: a process that does not
        # start leaves its log for the start error that names it, and one stopped (a scale-down,
        # the cluster's stop) for whoever looks into what happened.
        log_dir = Path(tempfile.gettempdir()) / "owc-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = log_dir / f"gateway-{self._sd_name}.log"
        self._proc = ServerProcess(command, log_path=self._log, host=host, port=config.gateway.port)
        self._drain_s = config.gateway.autoscaling.drain_timeout_s
        self._proc.start()
        try:
            await self._proc.wait_ready(60)
        except BaseException:
            await self._proc.stop_async(grace_s=2)
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        if self._sd_dir is not None:
            write_targets(self._sd_dir, f"gateway-{self._sd_name}", [
                {"targets": [host_port(host, metrics_port)], "labels": {"gateway_replica": self._sd_name}}
            ])
        self._sync.start()

    async def check_health(self) -> None:
        if not self._proc.alive():
            # Its own words (e.g. a port it could not bind): its start was judged on the shared API
            # port, where another process may have answered for it.
            raise RuntimeError(f"gateway process exited with code {self._proc.returncode}{self._proc.log_hint()}")
        if not self._sync.running:
            raise RuntimeError("endpoint sync stopped")

    async def __del__(self) -> None:
        await self._sync.stop()
        if self._sd_dir is not None:
            remove_targets(self._sd_dir, f"gateway-{self._sd_name}")
        # SIGTERM: the process drains (no new connections, its streams finish) for up to the
        # drain timeout, then exits; only a process still there after that is killed.
        await self._proc.stop_async(grace_s=self._drain_s + 5)
        shutil.rmtree(self._dir, ignore_errors=True)  # its log stays, as an engine's does (owc-logs)


def gateway_deployment(cfg: OwcConfig, env: dict[str, str] | None = None):
    options: dict[str, Any] = {"num_cpus": cfg.gateway.cpus}
    if cfg.gateway.ray_resources:
        options["resources"] = dict(cfg.gateway.ray_resources)
    if env:
        options["runtime_env"] = {"env_vars": env}
    return serve.deployment(GatewayReplica).options(
        name="owc-gateway",
        num_replicas=cfg.gateway.replicas.start,
        ray_actor_options=options,
        max_ongoing_requests=100,
        health_check_period_s=5,
        # Serve waits this long for __del__ (the drain) before it kills the replica's actor.
        graceful_shutdown_timeout_s=cfg.gateway.autoscaling.drain_timeout_s + 15,
    )
