"""`owc conformance`: a bare engine and the gateway in front of it, called alike."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cluster.cli._common import console, out


def conformance(
    *,
    engine: Annotated[str, typer.Option(help="Base URL of the bare engine (vLLM's OpenAI server)")],
    gateway: Annotated[str, typer.Option(help="Base URL of the owc gateway in front of it")],
    model: Annotated[Optional[str], typer.Option(help="Model name at the gateway (default: the engine's)")] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="OWC_API_KEY", help="API key for the gateway")] = None,
    engine_key: Annotated[Optional[str], typer.Option(envvar="OWC_ENGINE_KEY", show_envvar=True,
                                                      help="The engine credential of an owc-started engine")] = None,
    max_tokens: Annotated[int, typer.Option(help="Output tokens per call")] = 48,
    only: Annotated[Optional[str], typer.Option(help="Only the cases whose name contains this")] = None,
    concurrency: Annotated[int, typer.Option(help="Calls at once (the engine batches them: faster; greedy text "
                                             "must then be batch-invariant)")] = 1,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the rows (both observations) here")] = None,
) -> None:
    """Run the same OpenAI calls against a bare engine and through the gateway; exit 1 on any mismatch."""
    from cluster.conformance import clients, first_model, run, table, write_json
    from cluster.conformance.cases import Settings

    e, g = clients(engine=engine, gateway=gateway, api_key=api_key, engine_key=engine_key)
    try:
        served = first_model(e)
    except Exception as err:  # noqa: BLE001 - any failure to reach the engine ends the run
        console.print(f"[red]cannot list the engine's models at {engine}: {err}[/red]")
        raise typer.Exit(2) from None
    rows = run(e, g, model=model or served, engine_model=served, settings=Settings(max_tokens=max_tokens), only=only,
               concurrency=concurrency)
    out.print(table(rows))
    bad = [r.feature for r in rows if not r.match]
    out.print(f"{len(rows) - len(bad)}/{len(rows)} rows match" + (f"; differ: {', '.join(bad)}" if bad else ""))
    if json_out:
        write_json(rows, str(json_out), engine_model=served, gateway_model=model or served, max_tokens=max_tokens)
    if bad:
        raise typer.Exit(1)
