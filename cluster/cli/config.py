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
    from cluster.config.adapters import lora_engine_kwargs
    from cluster.config.rollout import candidate_model

    # Each engine's section by its key path: the model's, and a candidate's where it sets its
    # own engine_kwargs or LoRA (it replaces the model's; an inherited one is checked once).
    kwargs = {f"models.{name}": m.engine_kwargs for name, m in cfg.models.items()}
    loras = {f"models.{name}": (m.lora, m.adapters) for name, m in cfg.models.items()}
    for name, m in cfg.models.items():
        if m.candidate is None:
            continue
        c = candidate_model(m)
        if m.candidate.engine_kwargs is not None:
            kwargs[f"models.{name}.candidate"] = c.engine_kwargs
        if m.candidate.lora is not None or m.candidate.adapters is not None:
            loras[f"models.{name}.candidate"] = (c.lora, c.adapters)
    problems = [
        f"{path}.engine_kwargs{'' if p.startswith(':') else '.'}{p}"
        for path, kw in kwargs.items() for p in check_engine_kwargs(kw, known)
    ]
    problems += [  # the LoRA flags owc derives from `lora:` and `adapters:`, through the same parser
        f"{path}.lora: {p.lstrip(': ')}" for path, (lora, adapters) in loras.items()
        for p in check_engine_kwargs(lora_engine_kwargs(lora, adapters), known)
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
