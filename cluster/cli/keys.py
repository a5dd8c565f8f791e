"""`owc keys create`: a new API key, printed once; only its SHA-256 is written."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cluster.cli._common import _load, console, out


def keys_create(
    *,
    tenant: Annotated[Optional[str], typer.Option(help="Tenant the key belongs to (tenant keys)")] = None,
    admin: Annotated[Optional[str], typer.Option(help="Name of an admin key (admin API) instead of a tenant key")] = None,
    file: Annotated[Optional[Path], typer.Option(help="Keys file to add the hash to (default: the config's "
                                                "gateway.api_keys_file, or admin_keys_file with --admin)")] = None,
    config: Annotated[Optional[Path], typer.Option(help="owc config naming the keys files")] = None,
) -> None:
    """Create a key: print it once (store it now: it cannot be shown again) and add its hash to the keys file."""
    from cluster.gateway.auth.keys import add_to_file, hash_key, new_key

    if (tenant is None) == (admin is None):
        console.print("[red]give exactly one of --tenant and --admin[/red]")
        raise typer.Exit(2)
    if file is None:
        gw = _load(config).gateway if config else None
        configured = (gw.admin_keys_file if admin else gw.api_keys_file) if gw else None
        if not configured:
            console.print("[red]--file is required (or a --config whose gateway names the keys file)[/red]")
            raise typer.Exit(2)
        file = Path(configured)
    key = new_key()
    add_to_file(file, hash_key(key), admin or tenant)
    console.print(f"added the hash of a new {'admin' if admin else 'tenant'} key for "
                  f"[bold]{admin or tenant}[/bold] to {file}; the key (shown once):")
    out.print(key, highlight=False)
