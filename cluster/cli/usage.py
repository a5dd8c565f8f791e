"""`owc usage`: per tenant x model x UTC day usage from the shared tenancy store."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Annotated, Optional

import typer

from cluster.cli._common import _load, console, out


def usage(
    *,
    tenant: Annotated[Optional[str], typer.Option(help="Only this tenant")] = None,
    since: Annotated[Optional[str], typer.Option(help="First UTC day, YYYY-MM-DD (default: 30 days ago)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    config: Annotated[Optional[Path], typer.Option(help="owc config whose gateway.store names the store")] = None,
    store_url: Annotated[Optional[str], typer.Option(help="redis://HOST:PORT/DB (instead of --config)")] = None,
) -> None:
    """Requests, prompt, completion and reasoning tokens and errors per tenant, model and day."""
    from cluster.tenancy.model import day_number
    from cluster.tenancy.redis_store import RedisStore
    from cluster.tenancy.report import render

    if fmt not in ("table", "csv", "json"):
        console.print("[red]--format is table, csv or json[/red]")
        raise typer.Exit(2)
    url = store_url
    if url is None and config is not None:
        store = _load(config).gateway.store
        url = store.url if store else None
    if not url:
        console.print("[red]give --store-url, or a --config with gateway.store[/red]")
        raise typer.Exit(2)
    try:
        first = dt.date.fromisoformat(since) if since else dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=30)
    except ValueError:
        console.print(f"[red]--since: not a date (YYYY-MM-DD): {since}[/red]")
        raise typer.Exit(2) from None

    async def read() -> list[dict]:
        s = RedisStore(url, timeout_s=5)
        try:
            return await s.usage(since_day=day_number(first), tenant=tenant)
        finally:
            await s.close()

    try:
        rows = asyncio.run(read())
    except Exception as e:  # noqa: BLE001 - the store's error, for the operator
        console.print(f"[red]cannot read the tenancy store {url}: {e}[/red]")
        raise typer.Exit(1) from None
    out.print(render(rows, fmt), highlight=False, markup=False, soft_wrap=True)
