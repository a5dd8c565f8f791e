"""A rollout's candidate with an image of its own on Kubernetes (docs/rollouts.md): the chart
gives it a worker group offering Ray no CPU, only a custom resource, and sets
candidate.ray_resources to it; the candidate's engine deployment takes that resource in
place of its CPUs (its GPUs stay), so it runs only there and nothing else lands there. The
chart side: tests/chart/test_chart_rollout.py."""

from __future__ import annotations

import pytest

from cluster.config.loader import parse_config
from cluster.config.rollout import candidate_model
from cluster.engine.replica import engine_deployment


def _options(model: dict, version: str = "candidate") -> tuple[dict, list[dict]]:
    m = parse_config({"models": {"m": model}}).models["m"]
    cfg, pin = (candidate_model(m), m.candidate.ray_resources) if version == "candidate" else (m, None)
    rc = engine_deployment("m", cfg, version, pin=pin)._replica_config
    return rc.ray_actor_options, rc.placement_group_bundles


@pytest.mark.parametrize("model, actor, bundles", [
    ({"source": "demo:tiny-llama", "cpus_per_replica": 2, "candidate": {"image": "x", "ray_resources": {"owc-c": 1}}},
     {"num_cpus": 0, "resources": {"owc-c": 1.0}}, [{"owc-c": 1.0}]),
    ({"source": "s", "accelerator": {"kind": "gpu", "type": "H100"}, "tensor_parallel_size": 2,
      "candidate": {"image": "x", "ray_resources": {"owc-c": 1}}},
     {"num_cpus": 0, "num_gpus": 2.0, "resources": {"accelerator_type:H100": 0.001, "owc-c": 1.0}},
     [{"GPU": 2.0, "accelerator_type:H100": 0.001, "owc-c": 1.0}]),
    # no ray_resources (owc serve, or the chart without candidate.image): as stable's, unchanged
    ({"source": "demo:tiny-llama", "cpus_per_replica": 2, "candidate": {"image": "x"}},
     {"num_cpus": 2.0}, [{"CPU": 2.0}]),
])
def test_the_candidate_takes_its_groups_resource_in_place_of_cpus(model, actor, bundles):
    assert _options(model) == (actor, bundles)


def test_stable_is_never_pinned_and_the_candidate_section_keeps_the_models_keys():
    model = {"source": "demo:tiny-llama", "cpus_per_replica": 2, "candidate": {"image": "x", "ray_resources": {"owc-c": 1}}}
    assert _options(model, "stable") == ({"num_cpus": 2.0}, [{"CPU": 2.0}])
    m = parse_config({"models": {"m": model}}).models["m"]
    assert candidate_model(m).cpus_per_replica == 2  # image and ray_resources are not model keys
