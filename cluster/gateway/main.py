"""The gateway process: `python -m cluster.gateway.main`. Under Ray Serve a gateway
replica supervises it (endpoints from a file it rewrites); `owc gateway` runs it in front
of fixed engine URLs. Either way the same app and token path, on uvloop, in its own
process (no Ray threads sharing its GIL)."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys

from prometheus_client import CollectorRegistry

from cluster.config.loader import load_config
from cluster.config.rollout import has_rollout
from cluster.config.schema import GatewayConfig, ModelConfig, OwcConfig
from cluster.engine.guard import ENGINE_KEY_ENV
from cluster.gateway.app import build_app, metrics_app
from cluster.gateway.edge.connections import ConnectionGuard, raise_open_file_limit
from cluster.discovery.rollouts import rollout_store
from cluster.discovery.sources import FileEndpoints, StaticEndpoints
from cluster.gateway.edge.server import UnsafeBindError, auth_for_bind, bind_socket, make_server, serve
from cluster.process import watch_parent


METRICS_CONNECTIONS = 64  # scrapers, not clients
YOUNG_GC_THRESHOLD = 10_000


def parse_upstreams(items: list[str]) -> dict[str, list[str]]:
    urls: dict[str, list[str]] = {}
    for item in items:
        model, sep, url = item.partition("=")
        if not sep or not model or not url.startswith(("http://", "https://")):
            raise ValueError(f"--upstream expects MODEL=http://host:port, got {item!r}")
        urls.setdefault(model, []).append(url)
    return urls


def run(
    *, cfg: OwcConfig, upstreams: dict[str, list[str]] | None, endpoints_file: str | None, metrics_port: int | None = None,
    engine_key: str | None = None,
) -> None:
    """``engine_key``: the engine credential (default: OWC_ENGINE_KEY from the environment;
    none for keyless engines behind `owc gateway --upstream`)."""
    auth = auth_for_bind(cfg.gateway)
    source = FileEndpoints(endpoints_file) if endpoints_file else StaticEndpoints(upstreams or {})
    registry = CollectorRegistry()
    key = engine_key if engine_key is not None else os.environ.get(ENGINE_KEY_ENV) or None
    open_files = raise_open_file_limit()  # the connection bound is derived from it
    app = build_app(config=cfg, endpoints=source, auth=auth, registry=registry, engine_key=key, open_files=open_files)
    api_socket = bind_socket(cfg.gateway.host, cfg.gateway.port)
    metrics_port = metrics_port or cfg.gateway.metrics_port
    # This process's own metrics port, so that Prometheus scrapes each gateway process (the
    # shared API port lands on any one of them); a metrics-only app, not a second API door.
    # The metrics port gets the same deadlines and a small connection bound of its own.
    side_bounds = dataclasses.replace(app.connections.bounds, max_connections=METRICS_CONNECTIONS)
    side = make_server(metrics_app(registry), side=True, connections=ConnectionGuard(side_bounds)) if metrics_port else None
    side_socket = bind_socket(cfg.gateway.host, metrics_port, shared=False) if metrics_port else None
    # What exists now lives as long as the process: keep it out of every later collection,
    # so that an oldest-generation pass scans only what requests allocate (~88k objects fewer;
    # Ray Serve's proxy does the same).
    gc.collect(2)
    gc.freeze()
    # The youngest generation collected every 10k allocations, not 700: a request allocates a few
    # hundred objects that die by reference count (in flight at most: thousands), and at 700 a
    # collection ran every few requests (~11 us of CPU a request; issue 34's profile).
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])

    import uvloop

    api = make_server(app, connections=app.connections, drain_timeout_s=cfg.gateway.autoscaling.drain_timeout_s)
    announced = None
    if metrics_port and any(has_rollout(m) for m in cfg.models.values()):
        # owc serve's rollout analysis reads each gateway process's own metrics (docs/rollouts.md).
        announced = rollout_store(cfg.model_cache_dir).announce(f"http://{cfg.gateway.local_host}:{metrics_port}")
    try:
        uvloop.run(serve(api, api_socket, side=side, side_socket=side_socket))
    finally:
        if announced is not None:
            announced.unlink(missing_ok=True)


def config_for_upstreams(urls: dict[str, list[str]], cfg: OwcConfig | None, host: str, port: int) -> OwcConfig:
    if cfg is None:
        return OwcConfig(models={m: ModelConfig(source="external") for m in urls}, gateway=GatewayConfig(host=host, port=port))
    return cfg.model_copy(update={"gateway": cfg.gateway.model_copy(update={"host": host, "port": port})})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="cluster.gateway.main")
    p.add_argument("--config", help="owc config (YAML or JSON)")
    p.add_argument("--endpoints-file")
    p.add_argument("--upstream", action="append", default=[])
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--metrics-port", type=int, help="serve /metrics on this port (per-process scrape target)")
    p.add_argument("--parent-pid", type=int, default=0)
    a = p.parse_args(argv)
    watch_parent(a.parent_pid)
    try:
        urls = parse_upstreams(a.upstream)
        cfg = load_config(a.config) if a.config else None
        if urls or cfg is None or a.host or a.port is not None:
            host = a.host or (cfg.gateway.host if cfg else "127.0.0.1")
            port = a.port if a.port is not None else (cfg.gateway.port if cfg else 8000)
            cfg = config_for_upstreams(urls, cfg, host, port)
        run(cfg=cfg, upstreams=urls, endpoints_file=a.endpoints_file, metrics_port=a.metrics_port)
    except (ValueError, OSError, UnsafeBindError) as e:
        print(f"gateway: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
