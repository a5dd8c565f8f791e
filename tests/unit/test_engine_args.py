"""engine_kwargs: vLLM's engine and server arguments, checked by vLLM's own parser where vLLM
is installed (names and values), only owc's reserved keys refused where it is not; the engine
launcher reads the same map through the same parser."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from cluster.config import load_config
from cluster.config.schema import ModelConfig
from cluster.engine import args as engine_args
from cluster.engine.args import check_engine_kwargs, kwargs_cli, vllm_server_args

REPO = Path(__file__).resolve().parents[2]
GPT_OSS = {"tool_call_parser": "openai", "enable_auto_tool_choice": True, "reasoning_parser": "openai_gptoss"}
UNKNOWN = "not a vLLM engine argument or server argument"


@pytest.fixture(scope="module")
def vllm():
    server = vllm_server_args()
    if server is None:
        pytest.skip("vLLM not installed")
    return server


GOOD = {
    "server-only arguments (gpt-oss parsers)": GPT_OSS,
    "engine-only arguments": {"max_num_seqs": 16, "enforce_eager": True, "kv_cache_memory_bytes": 64 << 20},
    "argument of both (reasoning_parser)": {"reasoning_parser": "openai_gptoss"},
    "gpt-oss Hopper recipe": {"async_scheduling": True, "max_num_batched_tokens": 8192,
                              "max_cudagraph_capture_size": 2048, "enable_prefix_caching": True},
    "float, human-readable int": {"gpu_memory_utilization": 0.9, "max_num_batched_tokens": "8k"},
    "a choice": {"kv_cache_dtype": "fp8"},
    "false: the --no- form": {"enable_prefix_caching": False},
    "null: vLLM's default": {"async_scheduling": None, "max_num_seqs": None},
    "false store_true: its default": {"disable_log_stats": False},
    "a map as JSON (a dataclass config)": {"compilation_config": {"cudagraph_mode": "PIECEWISE"}},
    "a list of maps": {"enable_lora": True, "lora_modules": [{"name": "a", "path": "/x"}]},
    "a plugin may register parser names": {"tool_call_parser": "mine", "tool_parser_plugin": "/x/p.py"},
    "nothing": {},
}

BAD = {
    "unknown name": ({"max_num_seqz": 4}, f"max_num_seqz: {UNKNOWN} (did you mean max_num_seqs?)"),
    "unknown name, nothing close": ({"frobnicate": 1}, f"frobnicate: {UNKNOWN}"),
    "help is not an argument": ({"help": True}, f"help: {UNKNOWN}"),
    "bad tool parser": ({"tool_call_parser": "opnai"},
                        "tool_call_parser: 'opnai' is not one of vLLM's tool_call_parsers (did you mean 'openai'?): "),
    "bad reasoning parser": ({"reasoning_parser": "openai_gpt_oss"},
                             "reasoning_parser: 'openai_gpt_oss' is not one of vLLM's reasoning_parsers "
                             "(did you mean 'openai_gptoss'?): "),
    "bad choice": ({"kv_cache_dtype": "fp9"}, "kv_cache_dtype: invalid choice: 'fp9'"),
    "bad int": ({"max_num_seqs": "many"}, "max_num_seqs: invalid int value: 'many'"),
    "float for an int": ({"max_num_seqs": 4.5}, "max_num_seqs: invalid int value: '4.5'"),
    "bool for an int": ({"max_num_seqs": True}, "max_num_seqs: invalid int value: 'true'"),
    "bad float": ({"gpu_memory_utilization": "high"}, "gpu_memory_utilization: invalid float value: 'high'"),
    "non-bool for a flag": ({**GPT_OSS, "enable_auto_tool_choice": "yes"},
                            "enable_auto_tool_choice: expects true or false, not 'yes'"),
    "bad field of a dataclass config": ({"compilation_config": {"cudagraph_mod": "x"}},
                                        "compilation_config: 1 validation error for CompilationConfig; cudagraph_mod"),
    "vLLM's own cross-check": ({"enable_auto_tool_choice": True},
                               "enable_auto_tool_choice: --enable-auto-tool-choice requires --tool-call-parser"),
    "reserved: owc's model field": ({"tensor_parallel_size": 2},
                                    "tensor_parallel_size: set by owc from the model's own fields; not an engine_kwarg"),
    "reserved: the guard": ({"api_key": "k"}, "api_key: the engine's door is owc's"),
    "reserved: the address": ({"port": 1}, "port: the engine's address is owc's"),
    "reserved: a config file": ({"config": "x.yaml"}, "config: a vLLM config file could set owc's own arguments"),
}


@pytest.mark.parametrize("kwargs", GOOD.values(), ids=GOOD)
def test_good_engine_kwargs_pass_vllms_parser(vllm, kwargs):
    assert check_engine_kwargs(kwargs, vllm) == []


@pytest.mark.parametrize("kwargs, problem", BAD.values(), ids=BAD)
def test_bad_engine_kwargs_are_named_with_vllms_reason(vllm, kwargs, problem):
    (found,) = check_engine_kwargs(kwargs, vllm)
    assert found.startswith(problem), found


def test_every_bad_entry_is_reported_not_only_the_first(vllm):
    found = check_engine_kwargs({"max_num_seqs": "x", "kv_cache_dtype": "fp9", "model": "m"}, vllm)
    assert [p.split(":")[0] for p in found] == ["max_num_seqs", "kv_cache_dtype", "model"]


UNCHECKED = {**GOOD, **{k: kwargs for k, (kwargs, _) in BAD.items() if not k.startswith("reserved")}}


@pytest.mark.parametrize("kwargs", UNCHECKED.values(), ids=UNCHECKED)
def test_without_vllm_names_and_values_go_unchecked(kwargs):
    assert check_engine_kwargs(kwargs, None) == []


@pytest.mark.parametrize("kwargs, problem", [v for k, v in BAD.items() if k.startswith("reserved")],
                         ids=[k for k in BAD if k.startswith("reserved")])
def test_without_vllm_owcs_own_keys_are_still_refused(kwargs, problem):
    (found,) = check_engine_kwargs(kwargs, None)
    assert found.startswith(problem)


@pytest.mark.parametrize("name", ["api_key", "middleware", "host", "port", "uds", "config"])
def test_the_door_keys_are_refused_by_the_schema_itself(name):
    with pytest.raises(ValidationError, match="set by owc"):
        ModelConfig(source="x", engine_kwargs={name: "x"})


def test_simulated_absent_vllm_gives_no_parser(monkeypatch):
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "vllm", None)
    assert vllm_server_args.__wrapped__() is None  # the uncached call: the cache keeps the real one


def test_cluster_config_and_the_check_do_not_import_vllm():
    code = ("import sys, cluster.config, cluster.engine.args, cluster.cli; "
            "sys.exit(any(m == 'vllm' or m.startswith('vllm.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0


def _gpt_oss_configs() -> dict[str, dict]:
    found = {p.name: m.engine_kwargs for p in sorted((REPO / "deploy").glob("gpt-oss-*.yaml"))
             for m in load_config(p).models.values()}
    chart = REPO / "helm" / "owc"
    found["values.yaml defaultModel"] = yaml.safe_load((chart / "values.yaml").read_text())["defaultModel"]["config"][
        "engine_kwargs"]
    for p in sorted((chart / "ci").glob("gpt-oss-*.yaml")):
        for name, m in yaml.safe_load(p.read_text())["owc"]["models"].items():
            found[f"{p.name} {name}"] = m["engine_kwargs"]
    return found


GPT_OSS_CONFIGS = _gpt_oss_configs()


@pytest.mark.parametrize("kwargs", GPT_OSS_CONFIGS.values(), ids=GPT_OSS_CONFIGS)
def test_the_gpt_oss_configs_set_the_parsers_and_validate(vllm, kwargs):
    assert GPT_OSS.items() <= kwargs.items()
    assert kwargs["async_scheduling"] is True and kwargs["max_num_batched_tokens"] == 8192
    assert check_engine_kwargs(kwargs, vllm) == []


def test_config_validate_names_the_key_path(vllm, tmp_path):
    from cluster.cli import app

    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  gpt-oss-20b:\n    source: x\n    engine_kwargs: {tool_call_parser: opnai, max_num_seqs: x}\n")
    r = CliRunner().invoke(app, ["config", "validate", str(bad)])
    assert r.exit_code == 2
    assert "models.gpt-oss-20b.engine_kwargs.tool_call_parser: 'opnai' is not one of" in r.output
    assert "models.gpt-oss-20b.engine_kwargs.max_num_seqs: invalid int value: 'x'" in r.output


def test_config_validate_checks_a_candidates_own_engine_kwargs(vllm, tmp_path):
    """A candidate's engine_kwargs replace the model's: the same parser checks them, under
    `candidate` (docs/rollouts.md); a typo there would otherwise only show as a candidate engine
    that never starts, its rollout pending until the conformance gate gives up."""
    from cluster.cli import app

    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  m:\n    source: x\n    engine_kwargs: {max_num_seqs: 4}\n"
                   "    candidate: {engine_kwargs: {max_num_seq: 8, dtype: float16}}\n")
    r = CliRunner().invoke(app, ["config", "validate", str(bad)])
    assert r.exit_code == 2, r.output
    assert "models.m.candidate.engine_kwargs.max_num_seq: not a vLLM engine argument" in r.output
    assert "models.m.candidate.engine_kwargs.dtype: set by owc" in r.output
    inherited = tmp_path / "inherited.yaml"  # a candidate inheriting the model's: reported once, under the model
    inherited.write_text("models:\n  m:\n    source: x\n    engine_kwargs: {max_num_seqz: 4}\n"
                         "    candidate: {source: y}\n")
    r = CliRunner().invoke(app, ["config", "validate", str(inherited)])
    assert r.exit_code == 2 and "models.m.engine_kwargs.max_num_seqz" in r.output and "candidate" not in r.output


def test_config_validate_without_vllm_still_refuses_owcs_keys(monkeypatch, tmp_path):
    from cluster.cli import app

    monkeypatch.setattr(engine_args, "vllm_server_args", lambda: None)
    ok = CliRunner().invoke(app, ["config", "validate", str(REPO / "deploy" / "gpt-oss-20b-1gpu.yaml")])
    assert ok.exit_code == 0 and "vLLM not installed" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  m:\n    source: x\n    engine_kwargs: {max_num_seqz: 1, dtype: float16}\n")
    r = CliRunner().invoke(app, ["config", "validate", str(bad)])
    assert r.exit_code == 2 and "models.m.engine_kwargs.dtype: set by owc" in r.output and "max_num_seqz" not in r.output


@pytest.fixture(scope="module")
def launch_parser(vllm):
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog="owc-engine"))  # exits on errors, as in the engine


def test_the_launcher_reads_engine_kwargs_as_vllm_serve_would(launch_parser):
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args

    from cluster.engine.launch import server_namespace

    kwargs = {**GPT_OSS, "async_scheduling": True, "enable_prefix_caching": False, "max_num_batched_tokens": "8k",
              "compilation_config": {"cudagraph_mode": "PIECEWISE"}, "max_num_seqs": None}
    ns = server_namespace(launch_parser, ["--model", "/m", "--port", "1234"], kwargs)
    assert (ns.tool_call_parser, ns.enable_auto_tool_choice, ns.reasoning_parser) == ("openai", True, "openai_gptoss")
    assert ns.async_scheduling is True and ns.enable_prefix_caching is False
    assert ns.max_num_batched_tokens == 8000  # vLLM's human-readable ints: k = 1000, K = 1024
    assert type(ns.compilation_config).__name__ == "CompilationConfig"  # parsed by vLLM, not a raw dict
    assert (ns.model, ns.port, ns.max_num_seqs) == ("/m", 1234, None)
    validate_parsed_serve_args(ns)


@pytest.mark.parametrize("kwargs", [{"port": 1}, {"max_num_seqz": 1}, {"enforce_eager": "yes"}, {"max_num_seqs": "x"}])
def test_the_launcher_refuses_what_validate_refuses(launch_parser, kwargs):
    from cluster.engine.launch import server_namespace

    with pytest.raises(SystemExit):
        server_namespace(launch_parser, ["--model", "/m"], kwargs)


def test_the_command_line_form(vllm):
    cli = kwargs_cli({**GPT_OSS, "enable_prefix_caching": False, "compilation_config": {"a": 1},
                      "lora_modules": [{"name": "a", "path": "/x"}], "async_scheduling": None}, vllm.actions)
    assert cli == ["--tool-call-parser=openai", "--enable-auto-tool-choice", "--reasoning-parser=openai_gptoss",
                   "--no-enable-prefix-caching", '--compilation-config={"a": 1}',
                   "--lora-modules", '{"name": "a", "path": "/x"}']
