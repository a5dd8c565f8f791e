"""`owc config validate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cluster.cli._common import _load, console, out


def config_validate(
    file: Annotated[Path, typer.Argument(help="owc config YAML")],
    engine_args: Annotated[bool, typer.Option(help="Also check engine_kwargs against vLLM (where installed)")] = True,
) -> None:
    """Validate a config file (works without vLLM; checks engine_kwargs where vLLM is)."""
    from cluster.engine.args import check_engine_kwargs, vllm_engine_arg_names

    cfg = _load(file)
    known = vllm_engine_arg_names() if engine_args else None
    problems = [
        f"models.{name}.engine_kwargs.{p}" for name, m in cfg.models.items() for p in check_engine_kwargs(m.engine_kwargs, known)
    ]
    if problems:
        console.print(f"[red]invalid config[/red] {file}")
        for p in problems:
            console.print(f"  {p}")
        raise typer.Exit(2)
    checked = "checked against vLLM" if known is not None else "vLLM not installed: engine_kwargs names not checked"
    out.print(f"[green]ok[/green] {file}: {len(cfg.models)} model(s) ({checked})")
