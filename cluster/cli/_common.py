"""What every `owc` command shares: the consoles and loading a config file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from cluster.config.loader import ConfigError, load_config

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _load(path: Optional[Path]):
    try:
        return load_config(path)
    except ConfigError as e:
        console.print(f"[red]invalid config[/red] {e.source}")
        for p in e.problems:
            console.print(f"  {p}")
        raise typer.Exit(2) from None
