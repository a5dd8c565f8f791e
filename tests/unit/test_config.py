from pathlib import Path

import pytest
import yaml

from cluster.config import ConfigError, load_config, parse_config
from cluster.engine.args import check_engine_kwargs, vllm_engine_arg_names, vllm_server_args

REPO = Path(__file__).resolve().parents[2]
DEPLOY = sorted((REPO / "deploy").glob("*.yaml"))


def test_embedded_default_is_the_local_cpu_demo():
    cfg = load_config(None)
    assert list(cfg.models) == ["tiny-llama"]
    assert cfg.models["tiny-llama"].source == "demo:tiny-llama"
    assert cfg.gateway.host == "127.0.0.1" and cfg.gateway.port == 8000
    assert load_config(REPO / "deploy" / "local-cpu.yaml") == cfg


@pytest.mark.parametrize("path", DEPLOY, ids=lambda p: p.name)
def test_every_deploy_example_validates(path):
    cfg = load_config(path)
    assert cfg.models
    known = vllm_server_args()  # engine and server arguments, names and values (None: no vLLM)
    for m in cfg.models.values():
        assert check_engine_kwargs(m.engine_kwargs, known) == []


def test_deploy_examples_cover_the_promised_setups():
    names = {p.name for p in DEPLOY}
    assert {"local-cpu.yaml", "gpt-oss-20b-1gpu.yaml", "gpt-oss-120b-tp2.yaml", "multi-model.yaml"} <= names
    tp2 = load_config(REPO / "deploy" / "gpt-oss-120b-tp2.yaml")
    assert any(m.tensor_parallel_size == 2 and m.accelerator.kind == "gpu" for m in tp2.models.values())


BASE = {"models": {"m": {"source": "demo:tiny-llama"}}}


def _with(path: str, value):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    "data, expected",
    [
        (_with("models.m.tensor_paralel_size", 2), "models.m.tensor_paralel_size: unknown key"),
        (_with("gateway.prot", 8000), "gateway.prot: unknown key"),
        (_with("surprise", 1), "surprise: unknown key"),
        (_with("models.m.tensor_parallel_size", 0), "models.m.tensor_parallel_size"),
        (_with("models.m.replicas", {"min": 3, "max": 2}), "replicas.min (3) > replicas.max (2)"),
        (_with("models.m.accelerator", {"kind": "tpu"}), "models.m.accelerator.kind"),
        (_with("models.m.accelerator", {"kind": "cpu", "type": "H100"}), "only meaningful with kind: gpu"),
        (_with("models.m.dtype", "float64"), "models.m.dtype"),
        (_with("models.m.aliases", ["x", "x"]), "duplicate aliases"),
        (_with("gateway.port", 70000), "gateway.port"),
        (_with("models.m.source", "demo:tiny-lama"),
         "models.m.source: Value error, unknown demo model 'demo:tiny-lama'; known: demo:tiny-llama, demo:tiny-gpt-oss"),
        ({"models": {}}, "models"),
        ({"gateway": {}}, "models: Field required"),
        ({"models": {"a": {"source": "x", "aliases": ["b"]}, "b": {"source": "y"}}}, "model name 'b' used by both"),
        (["not", "a", "mapping"], "<root>: expected a mapping"),
    ],
)
def test_bad_configs_name_the_key_path(data, expected):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert expected in str(err.value)


@pytest.mark.parametrize("data, expected", [
    (_with("models.m.max_model_lenn", 1024), "models.m.max_model_lenn: unknown key (did you mean 'max_model_len'?)"),
    (_with("gateway.prot", 8000), "gateway.prot: unknown key (did you mean 'port'?)"),
    (_with("models.m.routing.polcy", "affinity"), "models.m.routing.polcy: unknown key (did you mean 'policy'?)"),
    (_with("gateway.tenants", {"a": {"request_per_minute": 5}}),
     "gateway.tenants.a.request_per_minute: unknown key (did you mean 'requests_per_minute'?)"),
    (_with("gateway.limits.max_body_byte", 5), "gateway.limits.max_body_byte: unknown key (did you mean 'max_body_bytes'?)"),
    (_with("rayy", {}), "rayy: unknown key (did you mean 'ray'?)"),
    (_with("surprise", 1), "surprise: unknown key"),  # nothing close: no guess
    (_with("gateway.replicas", "two"),
     "gateway.replicas: Value error, expected an int (that many gateway processes) or {min, max, initial}, got 'two'"),
])
def test_a_newcomers_mistakes_say_what_to_write(data, expected):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert expected in err.value.problems, err.value.problems


def test_gateway_replicas_still_takes_an_int_or_bounds():
    assert parse_config(_with("gateway.replicas", 3)).gateway.replicas.start == 3
    assert parse_config(_with("gateway.replicas", {"min": 1, "max": 4})).gateway.replicas.max == 4


def test_unknown_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    "kwargs, known, problems",
    [
        ({"max_num_seqs": 4}, frozenset({"max_num_seqs"}), []),
        ({"max_num_seq": 4}, frozenset({"max_num_seqs"}),
         ["max_num_seq: not a vLLM engine argument or server argument (did you mean max_num_seqs?)"]),
        ({"tensor_parallel_size": 2}, None, ["tensor_parallel_size: set by owc from the model's own fields; not an engine_kwarg"]),
        ({"anything": 1}, None, []),  # vLLM not installed: names cannot be checked
    ],
)
def test_engine_kwargs_check(kwargs, known, problems):
    assert check_engine_kwargs(kwargs, known) == problems


def test_engine_kwargs_checked_against_real_vllm_when_installed():
    known = vllm_engine_arg_names()
    if known is None:
        pytest.skip("vLLM not installed")
    assert {"max_num_seqs", "enforce_eager", "kv_cache_memory_bytes", "tool_call_parser"} <= known
    assert check_engine_kwargs({"max_num_seqz": 1}, vllm_server_args()) == [
        "max_num_seqz: not a vLLM engine argument or server argument (did you mean max_num_seqs?)"]


def test_resolve_aliases():
    cfg = parse_config({"models": {"a": {"source": "x", "aliases": ["alpha"]}}})
    assert cfg.resolve("a") == "a" and cfg.resolve("alpha") == "a" and cfg.resolve("b") is None


def test_the_metrics_port_is_not_the_api_port():
    from pydantic import ValidationError

    from cluster.config.schema import GatewayConfig

    with pytest.raises(ValidationError, match="metrics_port must differ"):
        GatewayConfig(port=8000, metrics_port=8000)
    assert GatewayConfig(port=8000, metrics_port=8001).metrics_port == 8001
