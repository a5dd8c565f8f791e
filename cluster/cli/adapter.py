"""`owc adapter`: train a LoRA adapter from chat examples, and add, list, remove adapters
on a running gateway (its admin API; an admin key from --api-key or OWC_ADMIN_KEY)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from cluster.cli._common import _load, console, out

URL = typer.Option(help="The gateway", envvar="OWC_URL")
KEY = typer.Option(help="An admin key", envvar="OWC_ADMIN_KEY", show_envvar=True)


def train(
    *,
    base: Annotated[Path, typer.Option(help="The base model's directory (e.g. `owc demo-model DIR`)")],
    data: Annotated[Path, typer.Option(help='JSONL, one {"messages": [...]} per line, the last the answer to learn')],
    out_dir: Annotated[Path, typer.Option("--out", help="Where the adapter is written")],
    rank: Annotated[int, typer.Option(help="LoRA rank (≤ the model's lora.max_rank)")] = 8,
    epochs: Annotated[int, typer.Option(help="Passes over the data")] = 3,
    lr: Annotated[float, typer.Option(help="AdamW learning rate")] = 5e-3,
    batch_size: Annotated[int, typer.Option(help="Examples per step")] = 8,
    config: Annotated[Optional[Path], typer.Option(help="owc config: the served --model's lora.max_rank applies")] = None,
    model: Annotated[Optional[str], typer.Option(help="Served model of --config the adapter is for")] = None,
) -> None:
    """Train a LoRA adapter (peft, on the model's chat template; CPU unless a GPU is there)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cluster.adapters.data import DataError, TrainSettings
    from cluster.adapters.train import train_adapter
    from cluster.config.adapters import LoraConfig

    max_rank = LoraConfig().max_rank
    if config is not None:
        cfg = _load(config)
        if model not in cfg.models:
            console.print(f"[red]--model must name one of {', '.join(cfg.models)}[/red]")
            raise typer.Exit(2)
        max_rank = cfg.models[model].lora.max_rank
    settings = TrainSettings(rank=rank, epochs=epochs, learning_rate=lr, batch_size=batch_size, max_rank=max_rank)
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("train", total=None, loss="-")

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, loss=f"{loss:.4f}")

        try:
            summary = train_adapter(base, data, out_dir, settings, progress)
        except DataError as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(2) from None
    console.print(f"adapter written to [bold]{out_dir}[/bold]: {summary['examples']} examples, "
                  f"{summary['seconds']}s on {summary['device']}, final loss {summary['final_loss']}")


def _call(method: str, url: str, path: str, key: Optional[str], body: dict | None = None):
    import httpx

    if not key:
        console.print("[red]an admin key is needed: --api-key or OWC_ADMIN_KEY[/red]")
        raise typer.Exit(2)
    try:
        r = httpx.request(method, url.rstrip("/") + path, json=body, headers={"Authorization": f"Bearer {key}"},
                          timeout=600)
    except httpx.HTTPError as e:
        console.print(f"[red]{url} unreachable: {e}[/red]")
        raise typer.Exit(1) from None
    try:
        data = r.json()
    except ValueError:
        data = {"error": {"message": r.text}}
    message = (data.get("error") or {}).get("message", "") if isinstance(data, dict) else ""
    if r.status_code == 404 and str(message).startswith("unknown route"):
        # A gateway without admin keys has no admin routes at all (docs/security.md).
        console.print(f"[red]{escape(url)} has no admin API[/red]: the gateway runs without admin keys (or --url is "
                      "not the gateway's API port). Create one "
                      "(`owc keys create --admin NAME --file admin-keys.yaml`), set `gateway.admin_keys_file` (or "
                      "OWC_ADMIN_KEYS) in the cluster's config, restart it, and pass the key as --api-key or "
                      "OWC_ADMIN_KEY", highlight=False)
        raise typer.Exit(1)
    return r.status_code, data


def _fail(status: int, data: dict) -> None:
    msg = (data.get("error") or {}).get("message", "") if isinstance(data, dict) else ""
    console.print(f"[red]{status}[/red] {msg}", markup=True, highlight=False)
    for row in data.get("replicas", []) if isinstance(data, dict) else []:
        if not row.get("ok"):
            console.print(f"  {row['replica_id']} ({row['url']}): {row['detail']}", markup=False, highlight=False)
    raise typer.Exit(1)


def add(
    model: Annotated[str, typer.Argument(help="Served model")],
    name: Annotated[str, typer.Argument(help="Adapter name (what requests put in `model`)")],
    source: Annotated[str, typer.Argument(help="Adapter directory (as the engines see it) or hub id")],
    *, url: Annotated[str, URL] = "http://127.0.0.1:8000", api_key: Annotated[Optional[str], KEY] = None,
) -> None:
    """Load an adapter on every live replica and record it (replicas started later load it too)."""
    if Path(source).expanduser().is_dir():
        source = str(Path(source).expanduser().resolve())
    status, data = _call("POST", url, f"/admin/v1/models/{model}/adapters", api_key, {"name": name, "source": source})
    if status != 200:
        _fail(status, data)
    out.print(f"[green]added[/green] {name} to {model}: loaded on {len(data['replicas'])} replica(s)")


def list_(
    model: Annotated[Optional[str], typer.Argument(help="Served model (default: all)")] = None,
    *, url: Annotated[str, URL] = "http://127.0.0.1:8000", api_key: Annotated[Optional[str], KEY] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """The adapters of one model (or all), with their source and per-replica state."""
    path = f"/admin/v1/models/{model}/adapters" if model else "/admin/v1/adapters"
    status, data = _call("GET", url, path, api_key)
    if status != 200:
        _fail(status, data)
    models = {model: data["adapters"]} if model else data["models"]
    if as_json:
        out.print_json(json.dumps(models))
        return
    for m, adapters in models.items():
        for a in adapters:
            states = ", ".join(f"{rid}: {s}" for rid, s in a["replicas"].items()) or "no live replica"
            out.print(f"{m}\t{a['name']}\t{a['origin']}\t{a['source'] or '-'}\t{states}", markup=False, highlight=False)


def remove(
    model: Annotated[str, typer.Argument(help="Served model")],
    name: Annotated[str, typer.Argument(help="Adapter name")],
    *, url: Annotated[str, URL] = "http://127.0.0.1:8000", api_key: Annotated[Optional[str], KEY] = None,
) -> None:
    """Forget a run-time adapter and unload it on every live replica."""
    status, data = _call("DELETE", url, f"/admin/v1/models/{model}/adapters/{name}", api_key)
    if status != 200:
        _fail(status, data)
    out.print(f"[green]removed[/green] {name} from {model}")
