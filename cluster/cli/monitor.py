"""`owc monitor`: a local Prometheus."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from cluster.cli._common import _load, console, out


def monitor(
    config: Annotated[Optional[Path], typer.Argument(help="owc config the cluster runs (for its file-SD directory)")] = None,
    port: Annotated[int, typer.Option(help="Prometheus port (127.0.0.1)")] = 9090,
    prometheus: Annotated[Optional[str], typer.Option(help="Prometheus binary (default: on PATH)")] = None,
    data_dir: Annotated[Path, typer.Option(help="Prometheus config and data")] = Path("~/.cache/owc/prometheus"),
    scrape_interval: Annotated[Optional[float], typer.Option(help="Seconds between scrapes and rule evaluations (default: the shipped config's)")] = None,
    write_config: Annotated[Optional[Path], typer.Option(
        metavar="DIR", help="Only write the Prometheus config, rules and targets link into DIR and exit (no Prometheus started)")] = None,
) -> None:
    """Run a local Prometheus with owc's scrape config, recording rules and alerts."""
    import asyncio

    from cluster.metrics.monitor import PrometheusNotFound, find_prometheus, prepare, prometheus_process
    from cluster.metrics.targets import file_sd_dir

    cfg = _load(config)
    sd = file_sd_dir(cfg.monitoring.file_sd_dir)
    if sd is None:
        console.print("[red]monitoring.file_sd_dir is unset in this config: nothing to scrape[/red]")
        raise typer.Exit(2)
    if write_config is not None:
        out.print(str(prepare(write_config.expanduser(), sd, interval_s=scrape_interval)))
        raise typer.Exit(0)
    try:
        binary = find_prometheus(prometheus)
    except PrometheusNotFound as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    run_dir = data_dir.expanduser()
    prepare(run_dir, sd, interval_s=scrape_interval)
    proc = prometheus_process(binary, run_dir, port=port)
    rc = 0
    # Both stop it, as for owc serve: SIGINT too even when started with it ignored (a background
    # job). Set before Prometheus starts, so before the ready line: a script that signals once it
    # reads that line is heard, and no signal finds Prometheus started outside the try.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc.start()
        asyncio.run(proc.wait_ready(60))
        out.print(f"[green]Prometheus[/green] at [bold]{proc.url}[/bold] scraping {sd} (rules: owc-recording, owc-alerts)")
        out.print(f"  targets: {proc.url}/targets   alerts: {proc.url}/alerts   Ctrl-C stops it.")
        sys.stdout.flush()
        while proc.alive():
            time.sleep(1)
        console.print(f"[red]Prometheus exited ({proc.returncode}); see {run_dir / 'prometheus.log'}[/red]")
        rc = 1
    except KeyboardInterrupt:
        pass
    except Exception as e:  # not ready in time, port taken: the log says why
        console.print(f"[red]{e}[/red]")
        rc = 1
    finally:
        # A second Ctrl-C does not cut the stop short (its SIGKILL fallback included).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        proc.stop(grace_s=5)
    raise typer.Exit(rc)
