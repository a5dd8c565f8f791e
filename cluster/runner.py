"""`owc serve` on a local Ray: start Ray + Serve, deploy the owc application, wait until it
is ready, and on SIGINT/SIGTERM (also mid start-up) tear down everything it started."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from cluster import reaper
from cluster.config.rollout import candidates, rollout_targets
from cluster.config.schema import OwcConfig
from cluster.discovery.rollouts import DIR_ENV as ROLLOUT_DIR_ENV
from cluster.metrics.targets import file_sd_dir, remove_targets, write_targets
from cluster.process import free_port
from cluster.readiness import wait_gateways_ready
from cluster.signals import install_signal_handlers, ray_signals_as_interrupt
from cluster.tenancy.local_redis import LocalRedis
from cluster.engine.demo_model import build_demo_model, demo_name, is_demo_source
from cluster.engine.failures import DeployError, StartFailure, failing, model_names
from cluster.engine.guard import ENGINE_KEY_ENV
from cluster.engine.launcher import Launcher, vllm_launcher
from cluster.local_stores import (needs_batch_store, needs_fair_share_store, needs_stats_store, needs_tenancy_store,
                                  per_process_limits, release, rollout_state_dir, with_local_store)

log = logging.getLogger(__name__)

RAY_ENV = {
    # Keep Ray's listeners on 127.0.0.1 and off the network (see ENVIRONMENT.md).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "0",
}


def ray_cpus(cfg: OwcConfig) -> int:
    """Logical CPUs a private local Ray needs for this config (never fewer than 4)."""
    if cfg.ray.num_cpus:
        return cfg.ray.num_cpus
    need = sum(m.cpus_per_replica * m.replicas.max for m in cfg.models.values())
    need += sum(c.cpus_per_replica * c.replicas.max for c in candidates(cfg).values())
    need += cfg.gateway.cpus * cfg.gateway.replicas.max
    return max(4, int(need + 1.999))


def prebuild_demo_models(cfg: OwcConfig, report: Callable[[str], None] = lambda _: None) -> None:
    for m in [*cfg.models.values(), *candidates(cfg).values()]:
        if is_demo_source(m.source):
            name = demo_name(m.source)
            report(f"building demo model {name}")
            build_demo_model(Path(cfg.model_cache_dir).expanduser() / name, name)


class LocalCluster:
    def __init__(
        self,
        cfg: OwcConfig,
        *,
        launcher: Launcher = vllm_launcher,
        temp_dir: str | None = None,
        handle_signals: bool = False,
    ):
        keys_file = cfg.gateway.api_keys_file
        if keys_file:  # replicas run elsewhere: make the path absolute
            gw = cfg.gateway.model_copy(update={"api_keys_file": str(Path(keys_file).expanduser().resolve())})
            cfg = cfg.model_copy(update={"gateway": gw})
        self.cfg = cfg
        self._launcher = launcher
        self._temp_dir = temp_dir or tempfile.mkdtemp(prefix="owc-ray-")
        self._started_ray = False
        self._redis: LocalRedis | None = None  # the tenancy store owc started, if it started one
        self._handle_signals = handle_signals
        self._sd_dir = file_sd_dir(cfg.monitoring.file_sd_dir)
        self._sd_name = f"ray-{uuid.uuid4().hex[:12]}"
        self._engine_key: str | None = None
        self._rollouts = None  # the rollout analysis (cluster.rollouts.local), when a model has a candidate
        self._rollout_dir: tuple[Path, int | None] | None = None  # chosen by this run (cluster.local_stores)

    @property
    def gcs_address(self) -> str:
        """Where another process (`owc controller --ray-address`) joins this cluster's Ray."""
        import ray

        return ray.get_runtime_context().gcs_address

    @property
    def engine_key(self) -> str | None:
        """The engine credential the replicas and gateways of this cluster share."""
        return self._engine_key

    @property
    def metrics_url(self) -> str | None:
        """The gateway's metrics-only server, where `gateway.metrics_port` fixes it (one gateway)."""
        g = self.cfg.gateway
        return f"http://{g.local_host}:{g.metrics_port}" if g.metrics_port else None

    @property
    def url(self) -> str:
        g = self.cfg.gateway
        return f"http://{g.local_host}:{g.port}"

    def start(self, report: Callable[[str], None] = lambda _: None, ready_timeout_s: float = 900, *,
              warn: Callable[[str], None] = lambda _: None) -> None:
        """``report``: progress (a status line); ``warn``: what the user should read while it
        goes on (a replica that failed to start and that Serve retries)."""
        import ray
        from ray import serve

        from cluster.app import APP_NAME, build_application
        from cluster.gateway.edge.server import check_one_metrics_port

        if not self.cfg.ray.address:  # its gateway processes share this host
            check_one_metrics_port(self.cfg.gateway)
        prebuild_demo_models(self.cfg, report)
        store = self.cfg.gateway.store
        if store is not None and not self.cfg.ray.address:  # one machine: its tenancy store too
            self._redis = self._local_redis(store.url, warn)
        elif not self.cfg.ray.address and (needs_fair_share_store(self.cfg) or needs_batch_store(self.cfg)
                                           or needs_stats_store(self.cfg) or needs_tenancy_store(self.cfg)):
            self._start_fair_share_store(warn)
        os.environ.update(RAY_ENV)
        # Rollout state of this cluster's own (its gateway processes inherit it through Ray's).
        if rollout_targets(self.cfg) and not os.environ.get(ROLLOUT_DIR_ENV):
            self._rollout_dir = rollout_state_dir(self.cfg, self._temp_dir, warn)  # (directory, its lock)
            os.environ[ROLLOUT_DIR_ENV] = str(self._rollout_dir[0])
        report("starting Ray")
        # ray.init installs a fatal-signal handler for SIGTERM: until owc takes SIGTERM back (so
        # that it unwinds into the teardown like Ctrl-C), Ray's exit becomes an Interrupted too.
        with ray_signals_as_interrupt():
            if self.cfg.ray.address:
                self._engine_key = os.environ.get(ENGINE_KEY_ENV)  # a Ray of your own: set on its nodes
                ray.init(address=self.cfg.ray.address, log_to_driver=False)
            else:
                metrics_port = free_port()
                # The engine credential of this deployment: the Ray node started here (raylet,
                # and every replica process it forks later) inherits it from this process's
                # environment while ray.init starts it: not argv, not Ray's runtime_env. It is
                # taken out again afterwards, so nothing else this process starts inherits it.
                self._engine_key = os.environ.get(ENGINE_KEY_ENV) or secrets.token_urlsafe(32)
                self._started_ray = True  # first: a stop during ray.init reaps the node it began
                with _environ(ENGINE_KEY_ENV, self._engine_key):
                    self._init_local_ray(metrics_port)
                if self._sd_dir is not None:  # Ray Serve's metrics (replicas, health) for `owc monitor`
                    write_targets(self._sd_dir, self._sd_name, [{"targets": [f"127.0.0.1:{metrics_port}"],
                                                                 "labels": {}}])
            if self._handle_signals:
                install_signal_handlers()
        serve.start(proxy_location="Disabled")
        report("starting engines (loading models)")
        app = build_application(self.cfg, launcher=self._launcher, gateway_env=self._gateway_env())
        # external_scaler_enabled: the capacity controller sets replica counts (Serve's own
        # autoscaling is not used by owc). Not serve.run: its wait ends in Serve's summary
        # ("Failed to update the deployments [...]"); deploy_and_wait says why.
        serve.run_many([serve.RunTarget(app, name=APP_NAME, route_prefix=None, external_scaler_enabled=True)],
                       wait_for_applications_running=False)
        names = {**model_names(self.cfg.models), **{k: n for n in candidates(self.cfg) for k in model_names([f"{n}-candidate"])}}
        deploy_and_wait(APP_NAME, names, warn, status=serve.status)
        report("waiting for the gateway")
        self.wait_ready(ready_timeout_s)
        if rollout_targets(self.cfg):  # the rollout analysis, in this process (docs/rollouts.md)
            from cluster.rollouts.local import start_local

            self._rollouts = start_local(self.cfg, self._engine_key)

    def _local_redis(self, url: str, warn: Callable[[str], None]) -> LocalRedis:
        """The local Redis, its data kept beside the batch files' contents (batch and file
        records, tenants' usage): a restart of `owc serve` forgets none of it."""
        data_dir = Path(self.cfg.batch.store_dir).expanduser() / "redis"
        try:
            redis = LocalRedis.ensure(url, data_dir=data_dir, restart=True)
        except RuntimeError as e:  # e.g. its append-only file unreadable: a store without it, said so
            warn(f"{e}; starting it without persistence")
            return LocalRedis.ensure(url, restart=True)
        if redis.proc is not None and not redis.persistent:
            warn(f"{data_dir} is in use by another Redis (another owc serve, or one left running) or cannot be "
                 "written: this run's batches, files and tenant usage last only until it stops")
        return redis

    def _start_fair_share_store(self, warn: Callable[[str], None]) -> None:
        """The gateway processes' shared fair-queue counts and tenants' limits (no gateway.store to
        use: cluster.local_stores): a local redis-server; none installed: each process alone."""
        url = f"redis://127.0.0.1:{free_port()}/0"
        try:
            self._redis = self._local_redis(url, warn)
        except RuntimeError as e:
            log.warning("fair sharing per gateway process: %s", e)
            per_process_limits(self.cfg, e, warn)
            return
        self.cfg = with_local_store(self.cfg, url)

    def _init_local_ray(self, metrics_port: int) -> None:
        import ray

        ray.init(
            address="local",
            _metrics_export_port=metrics_port,
            num_cpus=ray_cpus(self.cfg),
            num_gpus=None,
            object_store_memory=self.cfg.ray.object_store_memory,
            include_dashboard=False,
            _temp_dir=self._temp_dir,
            log_to_driver=False,
            runtime_env={"env_vars": dict(RAY_ENV)},
        )

    def _gateway_env(self) -> dict[str, str]:
        """On a Ray cluster of your own (`ray.address`), the key env vars given to `owc serve`
        reach the gateway replicas through Serve's runtime_env; a Ray this process starts
        inherits its environment, so nothing secret goes into a runtime_env then."""
        if not self.cfg.ray.address:
            return {}
        gw = self.cfg.gateway
        return {v: os.environ[v] for v in (gw.api_keys_env, gw.admin_keys_env) if v and os.environ.get(v)}

    def wait_ready(self, timeout_s: float) -> None:
        # On the Ray this process started, every gateway process shares this host's port: wait
        # for each. On a Ray cluster of your own they may run on other nodes, out of this URL's reach.
        wait_gateways_ready(self.url, self.cfg.gateway.replicas.start if self._started_ray else 1, timeout_s)

    def stop(self, serve_timeout_s: float = 6.0) -> None:
        """Graceful Serve shutdown (replicas stop their engines), bounded: a replica still
        loading its model would hold it for minutes. Then Ray itself goes, and with it every
        worker; engine processes die with their replica (they watch their parent). The local
        tenancy store, if owc started one, goes after them."""
        if self._rollouts is not None:
            self._rollouts.stop()
        if self._rollout_dir is not None:  # chosen by this run, not the caller's $OWC_ROLLOUT_DIR
            os.environ.pop(ROLLOUT_DIR_ENV, None)
            release(self._rollout_dir[1])
            self._rollout_dir = None
        if self._sd_dir is not None:
            remove_targets(self._sd_dir, self._sd_name)
        try:
            self._stop_ray(serve_timeout_s)
        finally:
            # Last: the gateway processes settle the usage of the streams they drain in it.
            if self._redis is not None:
                self._redis.stop()
                self._redis = None

    def _stop_ray(self, serve_timeout_s: float) -> None:
        import ray
        from ray import serve

        if self._started_ray:
            # Started before Ray goes down, in its own session: it finishes the job even if
            # this process ends abruptly during the shutdown (a node whose ray.init was cut: now).
            reaper.spawn(_ray_node_processes(), timeout_s=serve_timeout_s + 8.0 if ray.is_initialized() else 0.0)
        if not ray.is_initialized():
            return
        # Bounded with asyncio rather than a thread: a thread left blocked in ray.get when
        # ray.shutdown() runs makes Ray's core worker end the whole process (exit 1).
        try:
            asyncio.run(asyncio.wait_for(serve.shutdown_async(), timeout=serve_timeout_s))
        except (Exception, asyncio.TimeoutError) as e:
            # Usual on a normal stop (the gateway processes drain): not an error, Ray's end stops the rest.
            log.info("Serve still shutting down after %.0fs (%r): stopping Ray, which ends every replica and "
                     "engine", serve_timeout_s, e)
        ray.shutdown()


def deploy_and_wait(app_name: str, models: dict[str, str], warn: Callable[[str], None], *,
                    status: Callable[[], Any], period_s: float = 0.5) -> None:
    """Until Serve's ``status()`` says the application is RUNNING. A replica that fails to
    start is told to ``warn`` (its engine's own error, once per new error) while Serve
    retries it; once Serve gives up, DeployError names each failing deployment's error, log
    file and, where owc knows, the fix."""
    seen: set[tuple[str, str]] = set()
    while True:
        app = status().applications.get(app_name)
        if app is None:  # as serve.run says it
            raise RuntimeError(f"Waiting for application {app_name} to be RUNNING, but application doesn't exist.")
        state = str(getattr(app.status, "value", app.status))
        if state == "RUNNING":
            return
        if state == "DEPLOY_FAILED":
            raise DeployError(f"Serve could not deploy {app_name}: {app.message}", failing(app.deployments, models))
        for f in failing(app.deployments, models, retrying=True):
            if (f.deployment, f.error) not in seen:
                seen.add((f.deployment, f.error))
                warn("\n".join(f.lines("failed to start, Serve retries it")))
        time.sleep(period_s)


def serve_failures(address: str, app_name: str = "owc") -> list[StartFailure]:
    """`owc status --ray-address`: the deployments of owc's application on a running Ray whose
    replicas fail (or failed) to start, each with its engine's error."""
    import ray
    from ray import serve

    os.environ.update(RAY_ENV)
    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        app = serve.status().applications.get(app_name)
    finally:
        ray.shutdown()
    if app is None:
        return []
    models = {n: n.removeprefix("engine-") for n in app.deployments if n.startswith("engine-")}
    return failing(app.deployments, models, retrying=True)


def _ray_node_processes() -> list[psutil.Process]:
    """The processes of the local Ray node this process started (gcs_server, raylet, their
    agents and workers, and what those spawned)."""
    out: list[psutil.Process] = []
    for child in psutil.Process().children():
        try:
            cmd = " ".join(child.cmdline())
            if "gcs_server" in cmd or "raylet" in cmd or "/ray/" in cmd:
                out.append(child)
                out.extend(child.children(recursive=True))
        except psutil.Error:
            continue
    return out


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """``name=value`` in this process's environment for the duration only."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
