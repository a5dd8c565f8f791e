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
    config: Annotated[Optional[Path], typer.Option(help="owc config whose gateway.store names the store; without "
                      "one, the Redis owc serve runs for it (the embedded default's when omitted)")] = None,
    store_url: Annotated[Optional[str], typer.Option(help="redis://HOST:PORT/DB (instead of --config)")] = None,
) -> None:
    """Requests, prompt, completion and reasoning tokens and errors per tenant, model and day."""
    from cluster.tenancy.local_redis import local_store_url
    from cluster.tenancy.model import day_number
    from cluster.tenancy.redis_store import RedisStore
    from cluster.tenancy.report import render

    if fmt not in ("table", "csv", "json"):
        console.print("[red]--format is table, csv or json[/red]")
        raise typer.Exit(2)
    url, local = store_url, None
    if url is None:
        cfg = _load(config)
        if cfg.gateway.store is not None:
            url = cfg.gateway.store.url
        else:  # `owc serve` counts tenants in a Redis of its own (cluster.local_stores), on a free port
            local = Path(cfg.batch.store_dir).expanduser() / "redis"
            url = local_store_url(local)
    if not url:
        console.print("[red]no tenancy store found: give --store-url, or the --config of a running owc serve "
                      "(or one with gateway.store)[/red]")
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
        hint = f" (the Redis owc serve runs for {local.parent}: is owc serve running?)" if local else ""
        console.print(f"[red]cannot read the tenancy store {url}{hint}: {e}[/red]")
        raise typer.Exit(1) from None
    out.print(render(rows, fmt), highlight=False, markup=False, soft_wrap=True)
