"""ModelConfig -> the vLLM OpenAI server's arguments, and the check of `engine_kwargs`
against vLLM's own EngineArgs (only where vLLM is installed)."""

from __future__ import annotations

import dataclasses
from functools import lru_cache

from cluster.config.schema import ModelConfig

# Set by owc itself; a config may not override them through engine_kwargs (api_key and
# middleware: the engine's door is owc's EngineGuard, cluster/engine/guard.py).
RESERVED_KWARGS = frozenset(
    {
        "model", "served_model_name", "host", "port", "tensor_parallel_size",
        "pipeline_parallel_size", "max_model_len", "dtype", "api_key", "middleware",
    }
)
GUARD = "cluster.engine.guard.EngineGuard"


@lru_cache(maxsize=1)
def vllm_engine_arg_names() -> frozenset[str] | None:
    """Field names of vLLM's AsyncEngineArgs, or None when vLLM is not installed."""
    try:
        from vllm.engine.arg_utils import AsyncEngineArgs
    except ImportError:
        return None
    return frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs))


def check_engine_kwargs(kwargs: dict[str, object], known: frozenset[str] | None) -> list[str]:
    """Problems with ``engine_kwargs`` (key names only: vLLM checks values at start)."""
    problems = []
    for key in kwargs:
        if key in ("api_key", "middleware"):
            problems.append(f"{key}: the engine's door is owc's (EngineGuard, the engine key); not an engine_kwarg")
        elif key in RESERVED_KWARGS:
            problems.append(f"{key}: set by owc from the model's own fields; not an engine_kwarg")
        elif known is not None and key not in known:
            problems.append(f"{key}: not a vLLM engine argument")
    return problems


def server_cli_args(
    *, model_path: str, served_name: str, cfg: ModelConfig, port: int | str, host: str = "127.0.0.1",
    guarded: bool = False,
) -> list[str]:
    """Arguments for vLLM's OpenAI server parser (owc-owned settings only). ``guarded``:
    install EngineGuard (the key itself goes through the environment, never argv)."""
    args = [
        "--model", model_path,
        "--served-model-name", served_name,
        "--host", host,
        "--port", str(port),
        "--tensor-parallel-size", str(cfg.tensor_parallel_size),
        "--pipeline-parallel-size", str(cfg.pipeline_parallel_size),
        "--dtype", cfg.dtype,
        "--disable-uvicorn-access-log",
    ]
    if cfg.max_model_len is not None:
        args += ["--max-model-len", str(cfg.max_model_len)]
    if guarded:
        args += ["--middleware", GUARD]
    return args


def engine_env(cfg: ModelConfig) -> dict[str, str]:
    """Environment for the engine process: offline, no usage stats, TP threads bound."""
    env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if cfg.accelerator.kind == "cpu":
        env["VLLM_TARGET_DEVICE"] = "cpu"
        if cfg.world_size > 1:
            # vLLM-CPU's default binding fails ("Not enough allowed NUMA nodes"): give each
            # rank its own core range; its Ray executor is refused on CPU, so use mp.
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(i) for i in range(cfg.world_size)))
    env.update(cfg.engine_env)
    return env


def engine_overrides(cfg: ModelConfig) -> dict[str, object]:
    kwargs = dict(cfg.engine_kwargs)
    if cfg.accelerator.kind == "cpu" and cfg.world_size > 1:
        kwargs.setdefault("distributed_executor_backend", "mp")
    return kwargs
