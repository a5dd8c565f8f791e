"""The gateway alone, in front of engines at fixed URLs: `owc gateway --upstream m=URL`.
The same app and token path as under Ray Serve; only the endpoint source differs."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from cluster.config.schema import GatewayConfig, ModelConfig, OwcConfig
from cluster.gateway.app import build_app
from cluster.gateway.auth import KeyStore
from cluster.gateway.discovery import StaticEndpoints
from cluster.gateway.server import bind_socket, check_bind_policy, make_server


def parse_upstreams(items: list[str]) -> dict[str, list[str]]:
    urls: dict[str, list[str]] = {}
    for item in items:
        model, sep, url = item.partition("=")
        if not sep or not model or not url.startswith(("http://", "https://")):
            raise ValueError(f"--upstream expects MODEL=http://host:port, got {item!r}")
        urls.setdefault(model, []).append(url)
    return urls


def run_standalone(*, upstream: list[str], cfg: OwcConfig | None, host: str, port: int) -> None:
    urls = parse_upstreams(upstream)
    if cfg is None:
        cfg = OwcConfig(
            models={m: ModelConfig(source="external") for m in urls},
            gateway=GatewayConfig(host=host, port=port),
        )
    else:
        cfg = cfg.model_copy(update={"gateway": cfg.gateway.model_copy(update={"host": host, "port": port})})
    keys = KeyStore.load(file=cfg.gateway.api_keys_file, env_var=cfg.gateway.api_keys_env)
    check_bind_policy(cfg.gateway, keys)
    app = build_app(config=cfg, endpoints=StaticEndpoints(urls), keys=keys, registry=CollectorRegistry())
    sock = bind_socket(host, port)
    server = make_server(app)

    import uvloop

    uvloop.run(server.serve(sockets=[sock]))
