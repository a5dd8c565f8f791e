"""Adapters and LoRA limits in the config (with and without vLLM's parser), the training
data and settings checks, the durable store's merge, and what the engine is launched with."""

from __future__ import annotations

import json

import pytest

from cluster.adapters.data import DataError, TrainSettings, load_chats, target_modules
from cluster.adapters.store import AdapterStore
from cluster.config.adapters import lora_engine_kwargs
from cluster.config.loader import ConfigError, parse_config
from cluster.engine.args import check_engine_kwargs, engine_env, engine_overrides, vllm_server_args


def cfg(**model):
    return parse_config({"models": {"m": {"source": "demo:tiny-llama", **model}}})


def problems(**model) -> str:
    with pytest.raises(ConfigError) as e:
        cfg(**model)
    return " ".join(e.value.problems)


def test_the_list_form_is_migrated_to_the_map_form():
    m = cfg(adapters=["a", "b"]).models["m"]
    assert list(m.adapters) == ["a", "b"] and all(a.source is None for a in m.adapters.values())
    assert "a" in m.adapters  # admission's `req.model in ...adapters` holds for the map
    assert "duplicate" in problems(adapters=["a", "a"])


def test_the_map_form_with_sources_enables_lora_and_sets_vllms_flags():
    m = cfg(adapters={"a": {"source": "/ad/a"}, "b": "/ad/b"}, lora={"max_loras": 1, "max_rank": 8}).models["m"]
    assert m.adapters["b"].source == "/ad/b"
    kw = engine_overrides(m)
    assert kw["enable_lora"] is True and kw["max_loras"] == 1 and kw["max_lora_rank"] == 8
    assert kw["lora_modules"] == [{"name": "a", "path": "/ad/a"}, {"name": "b", "path": "/ad/b"}]
    assert engine_env(m)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_lora_is_off_without_adapters_and_on_when_asked():
    assert "enable_lora" not in engine_overrides(cfg().models["m"])
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in engine_env(cfg().models["m"])
    kw = engine_overrides(cfg(lora={"enabled": True, "max_cpu_loras": 4}).models["m"])
    assert kw["enable_lora"] and kw["max_cpu_loras"] == 4 and "lora_modules" not in kw


@pytest.mark.parametrize("model, expected", [
    ({"lora": {"max_rank": 7}}, "not one of vLLM's ranks"),
    ({"lora": {"max_loras": 0}}, "max_loras"),
    ({"lora": {"max_loras": 4, "max_cpu_loras": 2}}, "max_cpu_loras (2) < lora.max_loras (4)"),
    ({"lora": {"enabled": False}, "adapters": {"a": {"source": "/x"}}}, "lora.enabled is false"),
    ({"engine_kwargs": {"enable_lora": True}}, "set by owc from the model's `lora:`"),
    ({"engine_kwargs": {"lora_modules": [{"name": "a", "path": "/x"}]}}, "lora_modules"),
    ({"adapters": {"bad name": {"source": "/x"}}}, "invalid adapter name"),
    ({"adapters": {"a": {"source": ""}}}, "at least 1 character"),
    ({"adapters": {"a": {"path": "/x"}}}, "path"),
])
def test_refused(model, expected):
    assert expected in problems(**model)


def test_adapter_names_are_unique_across_models_and_tenants_name_real_adapters():
    with pytest.raises(ConfigError):
        parse_config({"models": {"m": {"source": "x", "adapters": {"a": {}}}, "n": {"source": "y", "aliases": ["a"]}}})
    with pytest.raises(ConfigError) as e:
        parse_config({"models": {"m": {"source": "x", "adapters": {"a": {}}}},
                      "gateway": {"tenants": {"t": {"adapters": ["zz"]}}}})
    assert "no model's adapter" in " ".join(e.value.problems)


def test_vllms_parser_takes_the_lora_flags_owc_derives():
    server = vllm_server_args()
    if server is None:
        pytest.skip("vLLM is not installed")
    m = cfg(adapters={"a": {"source": "/ad/a"}}, lora={"max_loras": 2, "max_rank": 16, "max_cpu_loras": 3}).models["m"]
    assert check_engine_kwargs(lora_engine_kwargs(m.lora, m.adapters), server) == []


def chats(tmp_path, lines):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_training_data_is_checked_line_by_line(tmp_path):
    ok = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    assert len(load_chats(chats(tmp_path, [ok, "", ok]))) == 2
    bad = {
        "not json": "line 2: not JSON",
        json.dumps({"messages": []}): "non-empty",
        json.dumps({"messages": [{"role": "user", "content": "q"}]}): "last message must be the assistant",
        json.dumps({"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}): "role",
        json.dumps({"messages": [{"role": "assistant", "content": "a"}]}): "a message before it",
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}): "empty",
    }
    for line, msg in bad.items():
        with pytest.raises(DataError, match=msg):
            load_chats(chats(tmp_path, [ok, line]))
    with pytest.raises(DataError, match="no examples"):
        load_chats(chats(tmp_path, [""]))
    with pytest.raises(DataError, match="no such file"):
        load_chats(tmp_path / "missing.jsonl")


def test_train_settings_and_targets():
    TrainSettings().check()
    with pytest.raises(DataError, match="exceeds the model's lora.max_rank 16"):
        TrainSettings(rank=32).check()
    with pytest.raises(DataError, match="≥ 1"):
        TrainSettings(rank=0).check()
    with pytest.raises(DataError, match="epochs"):
        TrainSettings(epochs=0).check()
    names = ["model.embed_tokens", "model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "lm_head"]
    assert target_modules(names) == ["q_proj", "down_proj"]  # never embeddings or lm_head
    with pytest.raises(DataError):
        target_modules(["model.embed_tokens", "lm_head"])


def test_the_store_merges_runtime_adapters_into_the_config_and_keeps_declared_ones(tmp_path):
    c = cfg(adapters={"decl": {"source": "/d"}})
    store = AdapterStore(c, tmp_path / "owc-adapters.json")
    store.put("m", "rt", "/r", "ops")
    assert c.resolve("rt") == "m" and c.models["m"].adapters["rt"].source == "/r"
    assert store.runtime("m") == {"rt"} and store.declared("m", "decl")
    other = cfg(adapters={"decl": {"source": "/d"}})  # another gateway process, same file
    AdapterStore(other, store.path)
    assert other.resolve("rt") == "m"
    store.put("m", "decl", "/elsewhere", "ops")  # the config's declaration wins
    assert c.models["m"].adapters["decl"].source == "/d"
    store.drop("m", "rt")
    assert c.resolve("rt") is None and "decl" in c.models["m"].adapters
    assert json.loads(store.path.read_text())["models"]["m"]["decl"]["added_by"] == "ops"
