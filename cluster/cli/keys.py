"""`owc keys create | list | revoke`: API keys; a new key is printed once and only its SHA-256
is written. Running gateways pick a change of the file up within `gateway.keys_reload_s`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cluster.cli._common import _load, console, out

FileOpt = Annotated[Optional[Path], typer.Option(help="Keys file (default: the config's gateway.api_keys_file, or "
                                                 "admin_keys_file with --admin)")]
ConfigOpt = Annotated[Optional[Path], typer.Option(help="owc config naming the keys files")]


def _keys_file(file: Path | None, config: Path | None, admin: bool) -> Path:
    if file is not None:
        return file
    gw = _load(config).gateway if config else None
    configured = (gw.admin_keys_file if admin else gw.api_keys_file) if gw else None
    if not configured:
        console.print("[red]--file is required (or a --config whose gateway names the keys file)[/red]")
        raise typer.Exit(2)
    return Path(configured)


def keys_create(
    *,
    tenant: Annotated[Optional[str], typer.Option(help="Tenant the key belongs to (tenant keys)")] = None,
    admin: Annotated[Optional[str], typer.Option(help="Name of an admin key (admin API) instead of a tenant key")] = None,
    file: FileOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create a key: print it once (store it now: it cannot be shown again) and add its hash to the keys file."""
    from cluster.gateway.auth.keys import add_to_file, hash_key, new_key

    if (tenant is None) == (admin is None):
        console.print("[red]give exactly one of --tenant and --admin[/red]")
        raise typer.Exit(2)
    file = _keys_file(file, config, admin is not None)
    key = new_key()
    add_to_file(file, hash_key(key), admin or tenant)
    console.print(f"added the hash of a new {'admin' if admin else 'tenant'} key for "
                  f"[bold]{admin or tenant}[/bold] to {file}; the key (shown once):")
    out.print(key, highlight=False)


def keys_list(
    *,
    admin: Annotated[bool, typer.Option("--admin", help="The admin keys file")] = False,
    file: FileOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Each key's name and the start of its hash (what `owc keys revoke` takes); never a key."""
    from cluster.gateway.auth.keys import read_key_file

    file = _keys_file(file, config, admin)
    try:
        entries = read_key_file(file)
    except (OSError, ValueError) as e:
        console.print(f"[red]cannot read {file}: {e}[/red]")
        raise typer.Exit(1) from None
    for key_hash, name in sorted(entries.items(), key=lambda kv: (kv[1], kv[0])):
        typer.echo(f"{name}\t{key_hash[:19]}…")  # tab-separated, as written (rich would expand the tab)


def keys_revoke(
    hash_prefix: Annotated[Optional[str], typer.Argument(help="The start of the key's hash, as `owc keys list` "
                                                          "shows it (sha256: optional)")] = None,
    *,
    tenant: Annotated[Optional[str], typer.Option(help="Revoke every key of this tenant (or admin key name)")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="The admin keys file")] = False,
    file: FileOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Remove one key (by the start of its hash) or all of a name's from the keys file."""
    from cluster.gateway.auth.keys import remove_from_file

    if (hash_prefix is None) == (tenant is None):
        console.print("[red]give a hash prefix or --tenant NAME (not both)[/red]")
        raise typer.Exit(2)
    file = _keys_file(file, config, admin)
    try:
        gone = remove_from_file(file, name=tenant, prefix=hash_prefix)
    except (OSError, ValueError) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    for key_hash, name in gone.items():
        console.print(f"revoked {name}'s key {key_hash[:19]}… in {file}")
    console.print("running gateways stop taking it within gateway.keys_reload_s (5 s), or at once on SIGHUP")
