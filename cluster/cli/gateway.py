"""`owc gateway`: only the gateway, in front of fixed engine URLs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cluster.cli._common import _load, console


def gateway(
    *,
    upstream: Annotated[list[str], typer.Option(help="MODEL=URL of an OpenAI engine server; repeatable")],
    config: Annotated[Optional[Path], typer.Option(help="owc config YAML (gateway settings, models)")] = None,
    host: Annotated[Optional[str], typer.Option(help="Address to bind [default: the config's gateway.host, "
                                                "else 127.0.0.1]")] = None,
    port: Annotated[Optional[int], typer.Option(help="API port [default: the config's gateway.port, else 8000]")] = None,
    metrics_port: Annotated[Optional[int], typer.Option(help="Port of the metrics-only server (/metrics)")] = None,
    engine_key: Annotated[Optional[str], typer.Option(envvar="OWC_ENGINE_KEY", show_envvar=True,
                                                      help="Credential the engines require (owc's EngineGuard); "
                                                      "omit for keyless engines")] = None,
) -> None:
    """Run only the gateway, in front of engines at fixed URLs (no Ray)."""
    from cluster.gateway.edge.server import UnsafeBindError, check_port_free
    from cluster.gateway.main import config_for_upstreams, parse_upstreams, run

    try:
        urls = parse_upstreams(upstream)
        loaded = _load(config) if config else None
        # --host/--port override the config's gateway.host/port only when given.
        host = host or (loaded.gateway.host if loaded else "127.0.0.1")
        port = port if port is not None else (loaded.gateway.port if loaded else 8000)
        cfg = config_for_upstreams(urls, loaded, host, port)
        check_port_free(cfg.gateway.host, cfg.gateway.port, fix="pass another --port")
        run(cfg=cfg, upstreams=urls, endpoints_file=None, metrics_port=metrics_port, engine_key=engine_key or "")
    except (ValueError, UnsafeBindError) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    except OSError as e:  # e.g. the metrics port taken
        console.print(f"[red]gateway: {e}[/red]")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass
