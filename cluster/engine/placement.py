"""TP x PP -> Ray placement bundles. Pure; tested without accelerators.

One bundle per pipeline stage, each holding that stage's TP ranks, so the ranks of a stage
(which talk every layer) always land on one node, while stages (which talk once per
micro-batch) may span nodes. The replica process itself lives in bundle 0 with the CPU
budget. CPU engines get one bundle holding the whole CPU budget.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    first = {"CPU": float(cpus), "GPU": float(tp), **extra}
    rest = [{"GPU": float(tp), **extra} for _ in range(pp - 1)]
    return Placement(
        bundles=[first, *rest],
        strategy="STRICT_PACK" if pp == 1 else "PACK",
        actor_num_cpus=float(cpus),
        actor_num_gpus=float(tp),
        actor_resources=dict(extra),
    )
