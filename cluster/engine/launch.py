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
import threading
import time


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    own = argparse.ArgumentParser(prog="cluster.engine.launch")
    own.add_argument("--parent-pid", type=int, default=0)
    own.add_argument("--kwargs", default="{}")
    ns = own.parse_args(argv[:split])
    if ns.parent_pid:
        threading.Thread(target=_watch_parent, args=(ns.parent_pid,), daemon=True).start()

    import uvloop
    from vllm.entrypoints.launchers.api_server.entry import run_server
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()
    parser = make_arg_parser(FlexibleArgumentParser(prog="owc-engine"))
    args = parser.parse_args(argv[split + 1:])
    for key, value in json.loads(ns.kwargs).items():
        if not hasattr(args, key):
            parser.error(f"unknown engine argument {key!r}")
        setattr(args, key, value)
    configure_logging_from_args(args)
    validate_parsed_serve_args(args)
    uvloop.run(run_server(args))


if __name__ == "__main__":
    main()
