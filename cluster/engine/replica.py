"""The engine deployment: one Ray Serve replica = one engine process on the replica's
placement group. Serve owns placement, lifecycle, health and the replica count; the
replica registers its engine's own OpenAI URL, which is where the gateway sends tokens."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import aiohttp
import ray
from ray import serve

from cluster.config.schema import EngineNetwork, ModelConfig
from cluster.discovery.timing import DRAIN_NOTICE_S, HEALTH_CHECK_PERIOD_S
from cluster.engine.guard import ENGINE_KEY_ENV, identity_env
from cluster.engine.launcher import Launcher, vllm_launcher
from cluster.engine.names import deployment_name
from cluster.engine.placement import placement_for
from cluster.process import ServerProcess
from cluster.routing.stats import parse_vllm_metrics

log = logging.getLogger(__name__)


class EngineUnhealthy(RuntimeError):
    pass


class EngineReplica:
    async def __init__(  # type: ignore[misc]  # Ray actors support async constructors
        self,
        *,
        served_name: str,
        model_config: ModelConfig,
        cache_dir: str,
        registry: Any,
        launcher: Launcher = vllm_launcher,
        network: EngineNetwork | None = None,
        version: str = "stable",
    ) -> None:
        """``version``: stable, or the candidate of a rollout (its own deployment; docs/rollouts.md)."""
        self._name = served_name
        self._version = version
        self._cfg = model_config
        self._registry = registry
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        log_dir = Path(tempfile.gettempdir()) / "owc-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        net = network or EngineNetwork()
        # Bound beyond loopback, a replica advertises its node's IP (gateways run elsewhere).
        advertise = "127.0.0.1" if net.bind_host in ("127.0.0.1", "localhost") else ray.util.get_node_ip_address()
        key = os.environ.get(ENGINE_KEY_ENV)
        if not key:  # fail closed: an engine owc starts answers only the gateway
            raise EngineUnhealthy(f"{ENGINE_KEY_ENV} is not set in this Ray worker's environment: `owc serve` sets it "
                                  "for a Ray it starts; on a Ray cluster of your own (or Kubernetes) set it on every node")
        command = launcher(served_name, self._cfg, cache_dir, host=net.bind_host, engine_key=key)
        command.env.update(identity_env(served_name, version))  # /health names them (EngineGuard)
        self._proc = ServerProcess(
            command,
            log_path=log_dir / f"engine-{served_name.replace('/', '_')}-{self._replica_id}.log",
            host=advertise,
            port=net.port,
        )
        self._proc.start()
        self._session = aiohttp.ClientSession()
        try:
            await self._proc.wait_ready(self._cfg.startup_timeout_s)
        except BaseException:
            await self._proc.stop_async(grace_s=2)
            await self._session.close()
            raise
        if self._cfg.lora.enabled is not False:  # run-time adapters (`owc adapter add`) before it takes traffic
            from cluster.adapters.store import load_recorded

            for problem in await load_recorded(self._proc.url, served_name, cache_dir, key):
                log.warning("engine %s replica %s: adapter not loaded: %s", served_name, self._replica_id, problem)
        await self._registry.register.remote(self._name, self._replica_id, self._proc.url, self._version)
        log.info("engine %s replica %s ready at %s", served_name, self._replica_id, self._proc.url)

    async def check_health(self) -> None:
        """Called by Serve; raising marks the replica unhealthy and Serve replaces it."""
        if not self._proc.alive():
            self._proc.reap()  # its engine core and workers, orphaned by a SIGKILL or a crash
            raise EngineUnhealthy(f"engine process exited with code {self._proc.returncode}")
        timeout_s = self._cfg.health_probe_timeout_s
        if not await self._proc.probe(self._session, timeout_s=timeout_s):
            raise EngineUnhealthy(f"engine /health did not answer 200 within {timeout_s:g}s")
        await self._registry.heartbeat.remote(self._name, self._replica_id, self._proc.url, self._version)

    async def info(self) -> dict[str, Any]:
        return {"model": self._name, "replica_id": self._replica_id, "url": self._proc.url, "pid": self._proc.pid}

    async def __del__(self) -> None:
        """Serve stops this replica (scale-down or shutdown): drain first. The replica leaves
        routing (``draining`` in the registry; every gateway sees it within ~1 s), then its
        engine finishes the requests it has, up to ``autoscaling.drain_timeout_s``; only
        then does the engine stop."""
        try:
            await self._registry.drain.remote(self._name, self._replica_id)
            await asyncio.sleep(DRAIN_NOTICE_S)
            await self._wait_idle(self._cfg.autoscaling.drain_timeout_s)
        except Exception as e:  # the registry may already be gone at shutdown
            log.debug("drain failed: %s", e)
        try:
            await self._registry.deregister.remote(self._name, self._replica_id)
        except Exception as e:
            log.debug("deregister failed: %s", e)
        await self._proc.stop_async(grace_s=5)
        await self._session.close()

    async def _wait_idle(self, timeout_s: float) -> None:
        if not await wait_idle(self._session, self._proc.url, timeout_s, alive=self._proc.alive):
            log.warning("engine %s replica %s still busy after %.0fs of draining", self._name, self._replica_id, timeout_s)


async def wait_idle(session: aiohttp.ClientSession, url: str, timeout_s: float, *,
                    alive: Callable[[], bool], period_s: float = 0.5) -> bool:
    """Until the engine at ``url`` has no request running or waiting (vLLM's own gauges), or
    its process is gone: True. False when ``timeout_s`` passed first. A /metrics read that
    fails or times out (a busy engine) is read again: it says nothing of the streams running."""
    deadline = time.monotonic() + timeout_s
    while alive():
        try:
            async with session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
                stats = parse_vllm_metrics(await r.text())
            if stats.running + stats.waiting == 0:
                return True
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            log.debug("drain: %s/metrics unread: %s", url, e)
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(period_s)
    return True


def engine_deployment(served_name: str, cfg: ModelConfig, version: str = "stable",
                      pin: dict[str, float] | None = None):
    """The Serve deployment (options) for one model: `engine-<model>`, and during a rollout
    `engine-<model>-candidate` for its candidate (``cfg`` then the candidate's model section).
    ``pin``: custom resources the replica takes in place of its CPUs (candidate.ray_resources:
    on Kubernetes the candidate's own worker group, whose pods offer Ray no CPU)."""
    p = placement_for(
        tensor_parallel_size=cfg.tensor_parallel_size,
        pipeline_parallel_size=cfg.pipeline_parallel_size,
        accelerator_kind=cfg.accelerator.kind,
        cpus=cfg.cpus_per_replica,
        accelerator_type=cfg.accelerator.type,
    )
    actor_options: dict[str, Any] = {"num_cpus": p.actor_num_cpus}
    if p.actor_num_gpus:
        actor_options["num_gpus"] = p.actor_num_gpus
    if p.actor_resources:
        actor_options["resources"] = p.actor_resources
    bundles = p.bundles
    if pin:
        actor_options["num_cpus"] = 0
        actor_options["resources"] = {**p.actor_resources, **pin}
        bundles = [{**{k: v for k, v in p.bundles[0].items() if k != "CPU"}, **pin}, *p.bundles[1:]]
    return serve.deployment(EngineReplica).options(
        name=deployment_name(served_name if version == "stable" else f"{served_name}-{version}"),
        num_replicas=cfg.replicas.start,
        ray_actor_options=actor_options,
        placement_group_bundles=bundles,
        placement_group_strategy=p.strategy,
        max_ongoing_requests=100,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,  # each check heartbeats to the registry
        health_check_timeout_s=30,
        # Scale-down drains in __del__: Serve must give it the drain timeout.
        graceful_shutdown_timeout_s=cfg.autoscaling.drain_timeout_s + DRAIN_NOTICE_S + 15,
    )
