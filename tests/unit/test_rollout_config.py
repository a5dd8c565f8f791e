"""The `candidate:` and `rollout:` sections (cluster/config/rollout.py): the issue's defaults,
inheritance of what the candidate does not override, and bad input named by its path."""

import pytest

from cluster.config.loader import ConfigError, parse_config
from cluster.config.adapters import lora_engine_kwargs, lora_source
from cluster.config.rollout import candidate_model, has_rollout, rollout_targets

ISSUE_EXAMPLE = {"models": {"tiny-llama": {
    "source": "demo:tiny-llama", "engine_kwargs": {"max_num_seqs": 16}, "aliases": ["tl"],
    "candidate": {"engine_kwargs": {"max_num_seqs": 64}},
}}}


def test_the_issue_example_with_its_defaults():
    m = parse_config(ISSUE_EXAMPLE).models["tiny-llama"]
    r = m.rollout
    assert (r.steps, r.step_s, r.mirror, r.sticky, r.conformance) == ([10, 50], 300.0, False, True, True)
    g = r.gates
    assert (g.max_error_rate_ratio, g.max_ttft_p95_ratio, g.max_itl_p95_ratio, g.min_delta_s) == (1.5, 1.5, 1.5, 0.05)
    assert g.min_requests == 50  # beyond the issue's keys: a window decides on at least 50 requests a version
    assert has_rollout(m)
    c = candidate_model(m)
    assert c.engine_kwargs == {"max_num_seqs": 64}  # overridden
    assert (c.source, c.aliases, c.candidate) == ("demo:tiny-llama", ["tl"], None)  # inherited; no candidate of its own


def test_no_candidate_no_rollout():
    m = parse_config({"models": {"m": {"source": "x"}}}).models["m"]
    assert not has_rollout(m)
    with pytest.raises(ValueError):
        candidate_model(m)


def test_an_adapter_candidate_is_a_rollout_of_its_own_loaded_beside_the_adapter():
    """adapters.<name>.candidate: known by the adapter's name, on the model's replicas as the
    LoRA `<name>@candidate`, which the gateway loads on demand from the candidate's source."""
    cfg = parse_config({"models": {"m": {"source": "x", "adapters": {
        "a": {"source": "/a1", "candidate": {"source": "/a2"}}, "b": {"source": "/b"}}}, "n": {"source": "y"}}})
    m = cfg.models["m"]
    assert has_rollout(m) and m.candidate is None
    assert rollout_targets(cfg) == {"a": ("m", "a")}
    # Not at the engine's start (a static LoRA that fails to load stops vLLM): on demand, by the gateway.
    assert lora_engine_kwargs(m.lora, m.adapters)["lora_modules"] == [{"name": "a", "path": "/a1"}, {"name": "b", "path": "/b"}]
    assert [lora_source(m.adapters, n) for n in ("a", "a@candidate", "b", "b@candidate", "c@candidate")] == \
        ["/a1", "/a2", "/b", None, None]


@pytest.mark.parametrize("model, expected", [
    ({"candidate": {"source": "y"}, "adapters": {"a": {"source": "/a1", "candidate": {"source": "/a2"}}}},
     "one rollout per model at a time: the model's candidate, adapters.a.candidate"),
    ({"adapters": {"a": {"source": "/a", "candidate": {"source": "/a2"}}, "b": {"source": "/b", "candidate": {"source": "/b2"}}}},
     "one rollout per model at a time: adapters.a.candidate, adapters.b.candidate"),
    ({"adapters": {"a": {"source": "/a", "candidate": {"source": "/a2"}}}, "rollout": {"mirror": True}},
     "rollout.mirror: not built for an adapter's candidate (adapters.a.candidate)"),
])
def test_one_rollout_per_model_at_a_time(model, expected):
    """The version label has one meaning per model (the model's versions, or one adapter's); mirror
    mode is not built for an adapter's candidate: refused, not ignored."""
    with pytest.raises(ConfigError) as err:
        parse_config({"models": {"m": {"source": "x", **model}}})
    assert expected in str(err.value)


def test_mirror_mode_and_its_bounded_queue():
    r = parse_config(_model(candidate={"source": "y"}, rollout={"mirror": True})).models["m"].rollout
    assert (r.mirror, r.mirror_queue) == (True, 64)
    assert parse_config(_model(candidate={"source": "y"}, rollout={"mirror": False})).models["m"].rollout.mirror is False
    assert parse_config(_model(candidate={"source": "y"}, rollout={"mirror_queue": 8})).models["m"].rollout.mirror_queue == 8
    for bad in (0, -1, "many", 1.5):
        with pytest.raises(ConfigError) as err:
            parse_config(_model(candidate={"source": "y"}, rollout={"mirror": True, "mirror_queue": bad}))
        assert "models.m.rollout.mirror_queue" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(_model(candidate={"source": "y"}, rollout={"mirror": "yes please"}))
    assert "models.m.rollout.mirror" in str(err.value)


def test_a_trailing_100_is_the_promotion():
    r = parse_config({"models": {"m": {"source": "x", "rollout": {"steps": [20, 50, 100]}}}}).models["m"].rollout
    assert r.analysed_steps == [20, 50]


def _model(**section):
    return {"models": {"m": {"source": "x", **section}}}


@pytest.mark.parametrize(("data", "expected"), [
    (_model(candidate={"sourc": "y"}), "models.m.candidate.sourc: unknown key"),
    (_model(rollout={"step": 5}), "models.m.rollout.step: unknown key"),
    (_model(rollout={"gates": {"max_ttft": 2}}), "models.m.rollout.gates.max_ttft: unknown key"),
    (_model(rollout={"steps": [50, 10]}), "strictly increasing"),
    (_model(rollout={"steps": []}), "at least one step"),
    (_model(rollout={"steps": [0, 10]}), "each step is a % in 1..100"),
    (_model(rollout={"steps": [100]}), "100 only as the last step"),
    (_model(rollout={"step_s": 4}), "models.m.rollout.step_s"),
    (_model(rollout={"gates": {"max_error_rate_ratio": 0.5}}), "max_error_rate_ratio"),
    (_model(candidate={"replicas": {"min": 3, "max": 1}}), "candidate.replicas: Value error, replicas.min (3) > replicas.max (1)"),
    (_model(candidate={"engine_kwargs": {"port": 1}}), "candidate.engine_kwargs"),
    (_model(candidate={"lora": {"max_rank": 7}}), "candidate.lora"),
    (_model(adapters={"a": {"source": "/a", "candidate": {}}}), "models.m.adapters.a.candidate.source"),
])
def test_bad_rollout_sections_name_the_key_path(data, expected):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert expected in str(err.value)
