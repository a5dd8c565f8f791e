"""Running the gateway app: a listening socket (SO_REUSEPORT, so several gateway replicas
on one host share the port and the kernel spreads connections) and a uvicorn server."""

from __future__ import annotations

import socket

import uvicorn

from cluster.config.schema import GatewayConfig
from cluster.gateway.auth import KeyStore


class UnsafeBindError(RuntimeError):
    pass


def check_bind_policy(gateway: GatewayConfig, keys: KeyStore) -> None:
    """Binding beyond loopback without API keys is refused."""
    if not gateway.loopback and not keys.enabled:
        raise UnsafeBindError(
            f"refusing to bind {gateway.host}:{gateway.port} without API keys: configure "
            f"gateway.api_keys_file or {gateway.api_keys_env or 'an API keys env var'}, or bind 127.0.0.1"
        )


def keys_for_bind(gateway: GatewayConfig) -> KeyStore:
    """The gateway's API keys, refused (UnsafeBindError) when the address it binds needs keys
    and there are none. The gateway process calls it before it binds; `owc serve` calls it
    up front too, so that a refusal comes before Ray and the engines start, not minutes later."""
    keys = KeyStore.load(file=gateway.api_keys_file, env_var=gateway.api_keys_env)
    check_bind_policy(gateway, keys)
    return keys


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def make_server(app, *, log_level: str = "warning") -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        http="httptools",
        lifespan="on",
        access_log=False,
        proxy_headers=False,
        log_level=log_level,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)
