"""ModelConfig -> the vLLM OpenAI server's arguments; `engine_kwargs` -> vLLM's command line.

`engine_kwargs` holds vLLM's engine arguments (AsyncEngineArgs: max_num_seqs, ...) and its
server (frontend) arguments (tool_call_parser, enable_auto_tool_choice, ...) alike, by the
Python names (dests) of vLLM's OpenAI server parser. Each entry becomes its command-line form
(`kwargs_cli`) and goes through that parser: `owc config validate` parses it to check names
and values (where vLLM is installed), and the engine launcher (cluster/engine/launch.py) parses
it after owc's own arguments, so both read the map exactly as `vllm serve --flag value` would.
"""

from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from cluster.config.adapters import RUNTIME_ENV, lora_enabled, lora_engine_kwargs
from cluster.config.schema import ENGINE_DOOR_KWARGS, ModelConfig
from cluster.engine.responses_store import MIDDLEWARE as STORE_BOUND
from cluster.engine.responses_store import store_env

# Set by owc itself; a config may not override them through engine_kwargs (api_key and
# middleware: the engine's door is owc's EngineGuard, cluster/engine/guard.py; uds and config
# would move the door or set it from a file).
RESERVED_KWARGS = frozenset(
    {
        "model", "served_model_name", "tensor_parallel_size", "pipeline_parallel_size", "max_model_len",
        "dtype", *ENGINE_DOOR_KWARGS,
    }
)
GUARD = "cluster.engine.guard.EngineGuard"
UNKNOWN = "not a vLLM engine argument or server argument"
# Server arguments whose values vLLM checks against a registry only when the server starts
# (argparse takes any string): checked here against the registry, unless a plugin can add names.
REGISTRIES = {"tool_call_parser": "tool_parser_plugin", "reasoning_parser": "reasoning_parser_plugin"}


class KwargError(ValueError):
    """An engine_kwargs entry vLLM's parser refuses (``key``: which entry)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


class _ParserError(Exception):
    pass


def _raise(message: str) -> None:
    raise _ParserError(message)


@dataclass(frozen=True)
class VllmServerArgs:
    """vLLM's OpenAI server parser (its errors raise instead of exiting) and its registries."""

    parser: argparse.ArgumentParser
    actions: Mapping[str, argparse.Action]
    registries: Mapping[str, frozenset[str]]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.actions)


def settable_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's options by dest, less help/version (positionals have no option to set)."""
    skip = (argparse._HelpAction, argparse._VersionAction)
    return {a.dest: a for a in parser._actions if a.option_strings and not isinstance(a, skip)}


@lru_cache(maxsize=1)
def vllm_server_args() -> VllmServerArgs | None:
    """vLLM's `make_arg_parser(FlexibleArgumentParser())`, or None when vLLM is not installed.
    Importing it takes seconds: built once per process, never at `cluster.config` import."""
    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.reasoning import ReasoningParserManager
        from vllm.tool_parsers import ToolParserManager
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        return None
    parser = make_arg_parser(FlexibleArgumentParser(prog="owc-engine"))
    parser.error = _raise  # type: ignore[method-assign]
    registries = {
        "tool_call_parser": frozenset(ToolParserManager.list_registered()),
        "reasoning_parser": frozenset(ReasoningParserManager.list_registered()),
    }
    return VllmServerArgs(parser=parser, actions=settable_actions(parser), registries=registries)


def vllm_engine_arg_names() -> frozenset[str] | None:
    """Names engine_kwargs may use (vLLM's engine and server arguments); None without vLLM."""
    server = vllm_server_args()
    return None if server is None else server.names


def _unknown(key: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(names), n=1)
    return UNKNOWN + (f" (did you mean {close[0]}?)" if close else "")


def _switch(key: str, value: object, action: argparse.Action) -> list[str]:
    """A flag without a value (--x / --no-x, store_true): true or false."""
    if not isinstance(value, bool):
        raise KwargError(key, f"expects true or false, not {value!r}")
    if isinstance(action, argparse.BooleanOptionalAction):
        yes, no = action.option_strings[0], next(o for o in action.option_strings if o.startswith("--no-"))
        return [yes if value else no]
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if value == action.const:
            return [action.option_strings[0]]
        if value == action.default:
            return []
    raise KwargError(key, f"cannot be set to {value!r} from engine_kwargs")


def _token(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def kwarg_cli(key: str, value: object, actions: Mapping[str, argparse.Action]) -> list[str]:
    """One engine_kwargs entry as vLLM's command line (null: leave vLLM's default).
    Maps and lists go as JSON, as vLLM's parser takes them (`--compilation-config '{...}'`)."""
    action = actions.get(key)
    if action is None:
        raise KwargError(key, _unknown(key, actions))
    if value is None:
        return []
    if action.nargs == 0:
        return _switch(key, value, action)
    flag = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        items = value if isinstance(value, list) else [value]
        return [flag, *(_token(v) for v in items)]
    return [f"{flag}={_token(value)}"]


def kwargs_cli(kwargs: Mapping[str, object], actions: Mapping[str, argparse.Action]) -> list[str]:
    """The whole map as vLLM's command line (raises KwargError for the first bad entry)."""
    return [t for key, value in kwargs.items() for t in kwarg_cli(key, value, actions)]


def _reserved(key: str) -> str | None:
    if key in ("api_key", "middleware"):
        return "the engine's door is owc's (EngineGuard, the engine key); not an engine_kwarg"
    if key in ("host", "port", "uds"):
        return "the engine's address is owc's (engine_network); not an engine_kwarg"
    if key == "config":
        return "a vLLM config file could set owc's own arguments; not an engine_kwarg"
    if key in RESERVED_KWARGS:
        return "set by owc from the model's own fields; not an engine_kwarg"
    return None


def _parse_one(key: str, tokens: list[str], server: VllmServerArgs) -> argparse.Namespace:
    try:
        return server.parser.parse_args(tokens)
    except _ParserError as e:
        # argparse says "argument --max-num-seqs: invalid int value: 'x'": the key names it here.
        reason = str(e).split(": ", 1)[1] if str(e).startswith("argument ") and ": " in str(e) else str(e)
        raise KwargError(key, _one_line(reason)) from None
    except Exception as e:  # noqa: BLE001 - a type function of vLLM's own (JSON, dataclass configs)
        raise KwargError(key, f"{type(e).__name__}: {_one_line(str(e))}") from None


def _one_line(text: str) -> str:
    """A (pydantic) multi-line error on one line, less its documentation link."""
    lines = (line.strip() for line in text.splitlines())
    return "; ".join(line for line in lines if line and not line.startswith("For further information"))


def _registered(key: str, ns: argparse.Namespace, kwargs: Mapping[str, object], server: VllmServerArgs) -> None:
    names, value = server.registries.get(key), getattr(ns, key, None)
    if not names or not value or value in names or kwargs.get(REGISTRIES[key]):
        return
    close = difflib.get_close_matches(str(value), list(names), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise KwargError(key, f"{value!r} is not one of vLLM's {key}s{hint}: {', '.join(sorted(names))}")


def _check_one(key: str, value: object, kwargs: Mapping[str, object], server: VllmServerArgs) -> None:
    ns = _parse_one(key, kwarg_cli(key, value, server.actions), server)
    if key in REGISTRIES:
        _registered(key, ns, kwargs, server)


def _check_together(kwargs: Mapping[str, object], server: VllmServerArgs) -> str | None:
    """vLLM's own pre-start checks across arguments (e.g. enable_auto_tool_choice needs
    tool_call_parser); a chat template path is the engine host's to check, not this one's."""
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args

    try:
        ns = server.parser.parse_args(kwargs_cli(kwargs, server.actions))  # a fresh namespace
        ns.chat_template = None
        validate_parsed_serve_args(ns)
    except Exception as e:  # noqa: BLE001 - vLLM raises TypeError/ValueError/its own errors
        message = _one_line(str(e)).removeprefix("Error: ")
        named = [k for k in kwargs if f"--{k.replace('_', '-')}" in message]
        return f"{named[0]}: {message}" if named else f": {message}"
    return None


def check_engine_kwargs(
    kwargs: Mapping[str, object], known: VllmServerArgs | frozenset[str] | None
) -> list[str]:
    """Problems with ``engine_kwargs``, each "key: reason" (": reason" for the map as a whole).

    ``known``: vLLM's server parser (names and values checked), a set of names (names only), or
    None where vLLM is not installed (only owc's reserved keys are refused)."""
    problems = []
    for key, value in kwargs.items():
        if reason := _reserved(key):
            problems.append(f"{key}: {reason}")
        elif isinstance(known, VllmServerArgs):
            try:
                _check_one(key, value, kwargs, known)
            except KwargError as e:
                problems.append(str(e))
        elif known is not None and key not in known:
            problems.append(f"{key}: {_unknown(key, known)}")
    if not problems and isinstance(known, VllmServerArgs) and (together := _check_together(kwargs, known)):
        problems.append(together)
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
    if cfg.responses_store.enabled:  # vLLM's store never evicts: owc bounds it (cluster.engine.responses_store)
        args += ["--middleware", STORE_BOUND]
    if cfg.resume_streams and cfg.harmony(served_name):  # gpt-oss resume renders and continues from token ids
        args.append("--enable-scale-out")
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
    if lora_enabled(cfg.lora, cfg.adapters):
        env[RUNTIME_ENV] = "True"  # the gateway loads and unloads adapters at run time
    s = cfg.responses_store
    env.update(store_env(s.enabled, s.max_entries, s.ttl_s))  # VLLM_ENABLE_RESPONSES_API_STORE only when on
    env.update(cfg.engine_env)
    return env


def engine_overrides(cfg: ModelConfig) -> dict[str, object]:
    kwargs = {**cfg.engine_kwargs, **lora_engine_kwargs(cfg.lora, cfg.adapters)}
    if cfg.accelerator.kind == "cpu" and cfg.world_size > 1:
        kwargs.setdefault("distributed_executor_backend", "mp")
    return kwargs
