"""`owc demo-model`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cluster.cli._common import console, out


def demo_model(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the model to")],
    name: Annotated[str, typer.Option(help="Demo model: tiny-llama or tiny-gpt-oss")] = "tiny-llama",
) -> None:
    """Build a tiny demo model into DIR, offline: tiny-llama (random weights, locally trained
    tokenizer) or tiny-gpt-oss (o200k/harmony tokenizer, weights shaped to follow the harmony frame)."""
    from cluster.engine.demo_model import DEMO_MODELS, build_demo_model

    if name not in DEMO_MODELS:
        raise typer.BadParameter(f"unknown demo model {name!r}; known: {', '.join(DEMO_MODELS)}", param_hint="--name")

    with console.status(f"building {name}"):
        path = build_demo_model(out_dir, name)
    out.print(str(path))
