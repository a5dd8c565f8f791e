"""TP x PP -> Ray placement bundles. Pure; tested without accelerators.

A GPU engine gets one bundle holding its TP ranks and the replica's CPU budget, packed on
one node (the ranks talk every layer). Pipeline parallelism on GPUs is refused until the
placement group is really handed to the vLLM process: one bundle per stage would reserve
GPUs that nothing uses (the replica actor holds only the first stage's). CPU engines get
one bundle holding the whole CPU budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.config.schema import PP_UNSUPPORTED


@dataclass(frozen=True)
class Placement:
    bundles: list[dict[str, float]]
    strategy: str
    # Resources the replica actor itself takes (a subset of bundle 0).
    actor_num_cpus: float
    actor_num_gpus: float
    actor_resources: dict[str, float]


def placement_for(
    *,
    tensor_parallel_size: int,
    pipeline_parallel_size: int,
    accelerator_kind: str,
    cpus: float,
    accelerator_type: str | None = None,
) -> Placement:
    tp, pp = tensor_parallel_size, pipeline_parallel_size
    if tp < 1 or pp < 1:
        raise ValueError("tensor_parallel_size and pipeline_parallel_size must be >= 1")
    if accelerator_kind == "cpu":
        return Placement(
            bundles=[{"CPU": float(cpus)}],
            strategy="STRICT_PACK",
            actor_num_cpus=float(cpus),
            actor_num_gpus=0.0,
            actor_resources={},
        )
    if accelerator_kind != "gpu":
        raise ValueError(f"unknown accelerator kind {accelerator_kind!r}")
    extra: dict[str, float] = {}
    if accelerator_type:
        # Ray's accelerator_type resource: a tiny fraction pins the node type.
        extra = {f"accelerator_type:{accelerator_type}": 0.001}
    if pp > 1:
        raise ValueError(PP_UNSUPPORTED)
    return Placement(
        bundles=[{"CPU": float(cpus), "GPU": float(tp), **extra}],
        strategy="STRICT_PACK",
        actor_num_cpus=float(cpus),
        actor_num_gpus=float(tp),
        actor_resources=dict(extra),
    )
