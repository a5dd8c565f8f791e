"""`owc` command line: serve, status, config validate, demo-model, gateway, monitor, bench,
controller, simulate, keys, usage, adapter, rollout. One module per command group; this one builds the typer app."""

from __future__ import annotations

import typer

from cluster.cli import adapter as adapter_cli
from cluster.cli import rollout as rollout_cli
from cluster.cli.bench import bench
from cluster.cli.config import config_validate
from cluster.cli.conformance import conformance
from cluster.cli.controller import controller, simulate
from cluster.cli.gateway import gateway
from cluster.cli.keys import keys_create, keys_list, keys_revoke
from cluster.cli.models import demo_model
from cluster.cli.monitor import monitor
from cluster.cli.serve import serve, status
from cluster.cli.usage import usage

app = typer.Typer(add_completion=False, no_args_is_help=True, help="owc: open-weight LLM serving cluster")
config_app = typer.Typer(no_args_is_help=True, help="Config files.")
app.add_typer(config_app, name="config")
keys_app = typer.Typer(no_args_is_help=True, help="API keys (stored as SHA-256 hashes).")
app.add_typer(keys_app, name="keys")
keys_app.command("create")(keys_create)
keys_app.command("list")(keys_list)
keys_app.command("revoke")(keys_revoke)
adapter_app = typer.Typer(no_args_is_help=True, help="LoRA adapters: train one, add, list, remove at run time.")
app.add_typer(adapter_app, name="adapter")
adapter_app.command("train")(adapter_cli.train)
adapter_app.command("add")(adapter_cli.add)
adapter_app.command("list")(adapter_cli.list_)
adapter_app.command("remove")(adapter_cli.remove)
rollout_app = typer.Typer(no_args_is_help=True, help="Rollouts of a candidate version: status, promote, abort, pause, resume.")
app.add_typer(rollout_app, name="rollout")
for _name in ("status", "promote", "abort", "pause", "resume"):
    rollout_app.command(_name)(getattr(rollout_cli, _name))
config_app.command("validate")(config_validate)
app.command("demo-model")(demo_model)
app.command()(serve)
app.command()(status)
app.command()(monitor)
app.command()(gateway)
app.command()(bench)
app.command()(conformance)
app.command()(controller)
app.command()(simulate)
app.command()(usage)

__all__ = ["app"]
