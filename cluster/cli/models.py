"""`owc demo-model`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cluster.cli._common import console, out


def demo_model(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the model to")],
    name: Annotated[str, typer.Option(help="Demo model")] = "tiny-llama",
) -> None:
    """Build the tiny demo model (random weights, locally trained tokenizer) into DIR."""
    from cluster.engine.demo_model import build_demo_model

    with console.status(f"building {name}"):
        path = build_demo_model(out_dir, name)
    out.print(str(path))
