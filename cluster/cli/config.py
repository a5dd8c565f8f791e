"""`owc config validate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cluster.cli._common import _load, console, out


def config_validate(
    file: Annotated[Path, typer.Argument(help="owc config YAML")],
    engine_args: Annotated[
        bool, typer.Option(help="Also check engine_kwargs (engine and server arguments) with vLLM's parser, where installed")
    ] = True,
) -> None:
    """Validate a config file (works without vLLM; checks engine_kwargs names and values where vLLM is)."""
    from cluster.engine.args import check_engine_kwargs, vllm_server_args

    cfg = _load(file)
    known = vllm_server_args() if engine_args else None
    problems = [
        f"models.{name}.engine_kwargs{'' if p.startswith(':') else '.'}{p}"
        for name, m in cfg.models.items() for p in check_engine_kwargs(m.engine_kwargs, known)
    ]
    from cluster.config.adapters import lora_engine_kwargs

    problems += [  # the LoRA flags owc derives from `lora:` and `adapters:`, through the same parser
        f"models.{name}.lora: {p.lstrip(': ')}" for name, m in cfg.models.items()
        for p in check_engine_kwargs(lora_engine_kwargs(m.lora, m.adapters), known)
    ]
    if problems:
        console.print(f"[red]invalid config[/red] {file}")
        for p in problems:
            console.print(f"  {p}", markup=False, highlight=False)
        raise typer.Exit(2)
    if not engine_args:
        checked = "engine_kwargs not checked against vLLM"
    elif known is None:
        checked = "vLLM not installed: engine_kwargs names not checked (nor values)"
    else:
        checked = "engine_kwargs checked with vLLM's parser"
    out.print(f"[green]ok[/green] {file}: {len(cfg.models)} model(s) ({checked})")
