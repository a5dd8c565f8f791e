"""Running the gateway app: a listening socket (SO_REUSEPORT, so several gateway replicas
on one host share the port and the kernel spreads connections) and a uvicorn server."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from typing import Any

import uvicorn

from cluster.config.schema import GatewayConfig
from cluster.gateway.auth.authenticator import Authenticator
from cluster.gateway.edge.connections import ConnectionGuard, protocol_factory


class UnsafeBindError(RuntimeError):
    pass


class PortInUseError(UnsafeBindError):
    pass


def check_port_free(host: str, port: int, *, fix: str = "set gateway.port in the config") -> None:
    """PortInUseError when something already listens on ``host:port``. Checked before a
    gateway starts: its own SO_REUSEPORT socket would fail later, deep in start-up, on a plain
    listener, and would silently share the port with another owc's gateway processes (the
    kernel then splits the connections between two clusters). A bind without SO_REUSEPORT
    fails on either."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are no clash
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
            raise PortInUseError(
                f"port {port} on {host} is already in use (another `owc serve` or `owc gateway`? "
                f"`owc status --url {url}` tells): stop it, or {fix}"
            ) from None


def check_local_ports(gateway: GatewayConfig) -> None:
    """What `owc serve`'s gateway processes bind on this host, checked before minutes of
    start-up: the API port (check_port_free) and a fixed metrics port. That one is not shared
    (each process serves its own metrics), so it allows one process only: with two, the second
    could never bind it and Serve retried it for as long as the cluster ran."""
    check_port_free(gateway.host, gateway.port)
    check_one_metrics_port(gateway)
    if gateway.metrics_port is not None:
        check_port_free(gateway.host, gateway.metrics_port, fix="set gateway.metrics_port in the config, or leave it unset")


def check_one_metrics_port(gateway: GatewayConfig) -> None:
    """UnsafeBindError when a fixed metrics port would be bound by more than one gateway process
    on this host (every local cluster: `owc serve`, and the runner for its other users)."""
    if gateway.metrics_port is not None and gateway.replicas.max > 1:
        raise UnsafeBindError(
            f"gateway.metrics_port is fixed ({gateway.metrics_port}), but gateway.replicas allows "
            f"{gateway.replicas.max} gateway processes on this host and each needs a metrics port of its own: "
            "leave metrics_port unset (each process then takes a free one, listed for Prometheus in "
            "monitoring.file_sd_dir), or set gateway.replicas: 1"
        )


def check_bind_policy(gateway: GatewayConfig, keys: Any) -> None:
    """Binding beyond loopback without a tenant credential (``keys.enabled``: API keys, a
    JWT issuer or a trusted proxy header) is refused."""
    if not gateway.loopback and not keys.enabled:
        raise UnsafeBindError(
            f"refusing to bind {gateway.host}:{gateway.port} without API keys: configure "
            f"gateway.api_keys_file or {gateway.api_keys_env or 'an API keys env var'}, or bind 127.0.0.1"
        )


def auth_for_bind(gateway: GatewayConfig) -> Authenticator:
    """The gateway's authenticator, refused (UnsafeBindError) when the address it binds
    needs credentials and there are none. The gateway process calls it before it binds; `owc serve` calls it
    up front too, so that a refusal comes before Ray and the engines start, not minutes later."""
    auth = Authenticator.from_config(gateway)
    check_bind_policy(gateway, auth)
    return auth


def bind_socket(host: str, port: int, *, shared: bool = True) -> socket.socket:
    """``shared``: SO_REUSEPORT (the API port, shared by the gateway processes of a host); a
    process's own metrics port is not shared, so a clash fails loudly instead of splitting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _SideServer(uvicorn.Server):
    """A second server in the same process (the metrics port): the API server owns the
    signals and stops this one when it stops."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class DrainingServer(uvicorn.Server):
    """The API server's way out (SIGTERM or SIGINT): it stops taking connections without
    dropping the ones the kernel already queued on its listening socket (with SO_REUSEPORT
    each process has its own queue, and closing it resets what waits there: those are
    accepted first), lets idle keep-alive connections send one more request for
    ``idle_grace_s`` (each then gets `Connection: close`), and finishes every open request
    and stream for up to ``timeout_graceful_shutdown`` (the drain timeout) before it exits.
    Connections that arrive later go to the other gateway processes sharing the port."""

    idle_grace_s = 1.0

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.draining = True
        for server in self.servers:
            for sock in server.sockets or ():
                await self._accept_queued(sock)
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            _close_after_this_request(connection)
        await asyncio.sleep(self.idle_grace_s)
        await super().shutdown(sockets)

    async def _accept_queued(self, sock) -> None:
        """Accept what waits in the listening socket's queue, now, so that closing it drops nothing."""
        raw = socket.socket(fileno=sock.fileno()) if not isinstance(sock, socket.socket) else sock
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    conn, _ = raw.accept()
                except (BlockingIOError, InterruptedError):
                    return
                conn.setblocking(False)
                await loop.connect_accepted_socket(self._protocol, conn)
        finally:
            if raw is not sock:
                raw.detach()

    def _protocol(self):
        return self.config.http_protocol_class(config=self.config, server_state=self.server_state,
                                               app_state=self.lifespan.state)


def _close_after_this_request(connection) -> None:
    """An open connection answers its current (or next) request with `Connection: close`."""
    cycle = getattr(connection, "cycle", None)
    if cycle is not None:
        cycle.keep_alive = False
    connection.draining = True


def make_server(app, *, log_level: str = "warning", side: bool = False,
                connections: ConnectionGuard | None = None, drain_timeout_s: float = 5.0) -> uvicorn.Server:
    """``connections``: the bounds on client connections (cluster.gateway.edge.connections);
    the API server has them, the metrics side server (Prometheus only) does not.
    ``drain_timeout_s``: how long a stopping API server finishes its open requests."""
    config = uvicorn.Config(
        app,
        http=protocol_factory(connections) if connections is not None else "httptools",
        lifespan="off" if side else "on",
        access_log=False,
        proxy_headers=False,
        server_header=False,  # no `server: uvicorn`: what the gateway runs on is nobody's business
        log_level=log_level,
        timeout_keep_alive=connections.bounds.keepalive_timeout_s if connections is not None else 30,
        timeout_graceful_shutdown=drain_timeout_s,
    )
    return _SideServer(config) if side else DrainingServer(config)


async def serve(api: uvicorn.Server, api_socket: socket.socket, *, side: uvicorn.Server | None = None,
                side_socket: socket.socket | None = None) -> None:
    """Run the API server (and a side server) until the API server stops."""
    task = asyncio.create_task(side.serve(sockets=[side_socket])) if side is not None else None
    try:
        await api.serve(sockets=[api_socket])
    finally:
        if task is not None:
            side.should_exit = True
            await task
