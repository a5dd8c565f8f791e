"""What an engine replica runs: a launcher turns (served name, ModelConfig, cache dir) into
the command of one OpenAI-compatible engine process. The vLLM launcher is the default;
tests inject the fake engine's launcher the same way (no patching)."""

from __future__ import annotations

import json
from typing import Protocol

from cluster.config.schema import ModelConfig
from cluster.engine.args import engine_env, engine_overrides, server_cli_args
from cluster.engine.demo_model import resolve_source
from cluster.engine.guard import ENGINE_KEY_ENV
from cluster.engine.launch import vllm_command
from cluster.process import Command


class Launcher(Protocol):
    def __call__(self, served_name: str, cfg: ModelConfig, cache_dir: str, *, host: str = "127.0.0.1",
                 engine_key: str | None = None) -> Command: ...


def vllm_launcher(served_name: str, cfg: ModelConfig, cache_dir: str, *, host: str = "127.0.0.1",
                  engine_key: str | None = None) -> Command:
    """``engine_key``: the engine answers only requests that carry it (EngineGuard); None
    leaves the engine open (benchmarks of bare vLLM)."""
    model_path = resolve_source(cfg.source, cache_dir)
    env = engine_env(cfg)
    if engine_key:
        env[ENGINE_KEY_ENV] = engine_key
    return vllm_command(
        cli_args=server_cli_args(model_path=model_path, served_name=served_name, cfg=cfg, port="{port}", host=host,
                                 guarded=bool(engine_key)),
        kwargs_json=json.dumps(engine_overrides(cfg)),
        env=env,
    )
