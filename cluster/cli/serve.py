"""`owc serve` (a local cluster) and `owc status` (of a running gateway)."""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cluster.cli._common import _load, console, out


def serve(
    config: Annotated[Optional[Path], typer.Argument(help="owc config YAML; the embedded CPU demo when omitted")] = None,
) -> None:
    """Run the cluster on a local Ray: engines, gateway, the OpenAI API."""
    from cluster.gateway.edge.server import UnsafeBindError, auth_for_bind, check_local_ports
    from cluster.engine.failures import DeployError
    from cluster.runner import LocalCluster
    from cluster.signals import install_signal_handlers

    cfg = _load(config)
    try:
        keyed = auth_for_bind(cfg.gateway).api_keys  # before minutes of start-up; the gateway process checks it again as it binds
        if not cfg.ray.address:  # its gateway processes bind this host's ports (on a Ray of your own: anywhere)
            check_local_ports(cfg.gateway)
    except (UnsafeBindError, OSError, ValueError) as e:
        console.print(f"[red]refusing to start:[/red] {e}")
        raise typer.Exit(2) from None
    cluster = LocalCluster(cfg, handle_signals=True)
    install_signal_handlers()
    try:
        with console.status("starting") as status:
            cluster.start(report=lambda msg: status.update(msg), warn=lambda msg: console.print(escape(msg)))
        _print_ready(cluster, keyed=keyed)
        while True:
            signal.pause()
    except KeyboardInterrupt as e:
        console.print(f"\nstopping ({e or 'interrupt'})…")
    except Exception as e:
        console.print(f"[red]failed:[/red] {escape(str(e))}")  # DeployError: each engine's error, log, fix
        _stop(cluster, serve_timeout_s=1.0 if isinstance(e, DeployError) else 6.0)  # nothing served: no drain
        raise typer.Exit(1) from None
    _stop(cluster)


def _stop(cluster, serve_timeout_s: float = 6.0) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cluster.stop(serve_timeout_s=serve_timeout_s)
    console.print("stopped")


def _print_ready(cluster, *, keyed: bool = False) -> None:
    """``keyed``: the gateway wants a tenant API key (the examples then send one)."""
    base = cluster.url + "/v1"
    first = next(iter(cluster.cfg.models))
    out.print(f"[green]owc is serving[/green] the OpenAI API at [bold]{base}[/bold]")
    for name, m in cluster.cfg.models.items():
        aka = f" (aliases: {', '.join(m.aliases)})" if m.aliases else ""
        out.print(f"  model [bold]{name}[/bold]{aka}: {m.replicas.start} replica(s), TP={m.tensor_parallel_size}")
        if m.candidate is not None:
            out.print(f"    candidate rolled out in steps {m.rollout.steps} % (`owc rollout status {name}`)")
    auth = " -H \"Authorization: Bearer $OWC_API_KEY\"" if keyed else ""
    key = "os.environ['OWC_API_KEY']" if keyed else "'-'"
    out.print("Try:" + (" (OWC_API_KEY: a tenant key of yours)" if keyed else ""))
    out.print(
        f"  curl {base}/chat/completions -H 'Content-Type: application/json'{auth} "
        f"-d '{{\"model\": \"{first}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Bonjour\"}}], "
        f"\"max_tokens\": 32}}'"
    )
    out.print(f"  python -c \"import os, openai; c = openai.OpenAI(base_url='{base}', api_key={key}); "
              "print(c.models.list())\"")
    if any(m.autoscaling.enabled for m in cluster.cfg.models.values()):
        out.print(f"Autoscaled models: run `owc monitor` and `owc controller --ray-address {cluster.gcs_address}`.")
    out.print("Ctrl-C stops everything.")
    sys.stdout.flush()


def status(
    url: Annotated[str, typer.Option(help="Gateway base URL")] = "http://127.0.0.1:8000",
    api_key: Annotated[Optional[str], typer.Option(envvar="OWC_API_KEY", help="API key")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    ray_address: Annotated[Optional[str], typer.Option(
        help="Also ask this Ray cluster's Serve (e.g. 127.0.0.1:6379): a replica that cannot start is shown with "
             "its engine's error, log file and fix")] = None,
) -> None:
    """Models, replicas and health of a running gateway (and, with --ray-address, why an engine does not start)."""
    import httpx

    failures = _serve_failures(ray_address) if ray_address else []
    try:
        ready = httpx.get(url.rstrip("/") + "/ready", timeout=5)
    except httpx.HTTPError as e:
        console.print(f"[red]gateway unreachable[/red] at {escape(url)}: {escape(str(e))} (is `owc serve` running? "
                      "--url takes its gateway.port, e.g. http://127.0.0.1:8000)")
        _print_failures(failures)
        raise typer.Exit(1) from None
    try:
        data = ready.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or "ready" not in data:
        console.print(f"[red]no owc gateway[/red] at {escape(url)}: GET /ready answered {ready.status_code} "
                      f"{escape(ready.headers.get('content-type', ''))}, not owc's readiness (is --url the gateway's "
                      "API port, not an engine's or a metrics port?)")
        _print_failures(failures)
        raise typer.Exit(1)
    if as_json:
        if ray_address:
            data["start_failures"] = [asdict(f) for f in failures]
        out.print_json(json.dumps(data))
    else:
        table = Table(title=f"owc at {url} — {'ready' if data.get('ready') else 'NOT ready'}")
        table.add_column("model")
        table.add_column("healthy replicas", justify="right")
        for name, m in data.get("models", {}).items():
            table.add_row(name, str(m.get("replicas", 0)))
        out.print(table)
        _print_failures(failures)
    raise typer.Exit(0 if data.get("ready") and not failures else 3)


def _serve_failures(address: str) -> list:
    from cluster.runner import serve_failures

    try:
        return serve_failures(address)
    except Exception as e:  # Ray unreachable: say so, still show the gateway
        console.print(f"[yellow]Ray at {address} not readable:[/yellow] {escape(str(e))}")
        return []


def _print_failures(failures: list) -> None:
    for f in failures:
        console.print(f"[red]{escape(f.lines()[0])}[/red]")
        for line in f.lines()[1:]:
            console.print(escape(line))
