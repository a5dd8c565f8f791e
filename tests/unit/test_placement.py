import pytest

from cluster.engine.placement import placement_for


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("pp", [1])
def test_gpu_bundles_one_per_stage_with_tp_gpus(tp, pp):
    p = placement_for(tensor_parallel_size=tp, pipeline_parallel_size=pp, accelerator_kind="gpu", cpus=2)
    assert len(p.bundles) == pp
    assert all(b["GPU"] == tp for b in p.bundles)
    assert sum(b["GPU"] for b in p.bundles) == tp * pp
    assert p.bundles[0]["CPU"] == 2 and all("CPU" not in b for b in p.bundles[1:])
    # TP ranks of a stage share one bundle, so one node; stages may spread only with PP.
    assert p.strategy == ("STRICT_PACK" if pp == 1 else "PACK")
    assert p.actor_num_gpus == tp and p.actor_num_cpus == 2


@pytest.mark.parametrize("tp, pp", [(1, 1), (2, 1), (4, 2)])
def test_cpu_engine_is_one_bundle_of_its_cpu_budget(tp, pp):
    p = placement_for(tensor_parallel_size=tp, pipeline_parallel_size=pp, accelerator_kind="cpu", cpus=3)
    assert p.bundles == [{"CPU": 3.0}] and p.strategy == "STRICT_PACK" and p.actor_num_gpus == 0


@pytest.mark.parametrize("tp", [1, 2])
def test_gpu_pipeline_parallelism_is_refused_until_the_placement_group_reaches_vllm(tp):
    # One bundle per stage would reserve GPUs the engine never receives.
    with pytest.raises(ValueError, match="pipeline_parallel_size > 1 is not supported on GPUs"):
        placement_for(tensor_parallel_size=tp, pipeline_parallel_size=2, accelerator_kind="gpu", cpus=1)


def test_accelerator_type_pins_every_bundle():
    p = placement_for(tensor_parallel_size=2, pipeline_parallel_size=1, accelerator_kind="gpu", cpus=1, accelerator_type="H200")
    assert all(b["accelerator_type:H200"] == 0.001 for b in p.bundles)
    assert p.actor_resources == {"accelerator_type:H200": 0.001}


@pytest.mark.parametrize("kw", [{"tensor_parallel_size": 0}, {"pipeline_parallel_size": 0}, {"accelerator_kind": "tpu"}])
def test_impossible_placements_raise(kw):
    args = {"tensor_parallel_size": 1, "pipeline_parallel_size": 1, "accelerator_kind": "gpu", "cpus": 1, **kw}
    with pytest.raises(ValueError):
        placement_for(**args)
