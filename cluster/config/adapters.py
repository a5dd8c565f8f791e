"""LoRA settings of a model: the adapters it serves (`adapters: {name: {source}}`) and the
engine's LoRA limits (`lora:`). owc turns them into vLLM's flags itself (enable_lora,
max_loras, max_lora_rank, max_cpu_loras, lora_modules) and sets
VLLM_ALLOW_RUNTIME_LORA_UPDATING, so none of those may come through engine_kwargs.

The list form of old (`adapters: [a, b]`) is still read: each name becomes an adapter
without a source (the engine has it already, e.g. through vLLM's own flags on an engine owc
does not start); owc then routes to it but never loads it."""

from __future__ import annotations

from pydantic import Field, model_validator

from cluster.config.base import StrictModel
from cluster.config.rollout import AdapterCandidate

# vLLM's --max-lora-rank choices (vllm/config/lora.py), checked without vLLM too.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM's LoRA flags: owc sets them from `lora:` and `adapters:`.
LORA_KWARGS = frozenset({"enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras", "lora_modules"})
RUNTIME_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"


class AdapterSpec(StrictModel):
    source: str | None = Field(
        None, min_length=1,
        description="Where the adapter's files are: a directory (`owc adapter train --out`; on Kubernetes a path "
        "on the model-cache volume) or a hub id. None: the engine has it already; owc routes to it, never loads it.",
    )
    candidate: AdapterCandidate | None = Field(
        None, description="A retrained version of this adapter, rolled out by the model's `rollout:` among the "
        "requests that name the adapter: loaded by the gateway on the model's replicas beside it, as "
        "`<name>@candidate`, when its first request reaches each (docs/rollouts.md).",
    )


def candidate_lora(name: str) -> str:
    """The LoRA name an adapter's candidate is loaded under on the engines: '@' is in no
    served name (cluster.config.base.NAME), so it never clashes with one a client can ask for."""
    return f"{name}@candidate"


def lora_source(adapters: dict[str, AdapterSpec], lora: str) -> str | None:
    """Where the engines load the LoRA ``lora`` from: an adapter's source, or its candidate's
    (``candidate_lora``); None: nothing owc loads."""
    spec = adapters.get(lora)
    if spec is not None:
        return spec.source
    name, _, tail = lora.rpartition("@")
    spec = adapters.get(name)
    return spec.candidate.source if tail == "candidate" and spec is not None and spec.candidate else None


class LoraConfig(StrictModel):
    enabled: bool | None = Field(
        None, description="Serve LoRA adapters (vLLM enable_lora). Default: on when the model declares adapters.",
    )
    max_loras: int = Field(2, ge=1, le=256, description="Adapters one batch may use at once (vLLM max_loras).")
    max_rank: int = Field(16, description=f"Largest adapter rank the engine takes (vLLM max_lora_rank; one of "
                          f"{', '.join(map(str, VLLM_LORA_RANKS))}).")
    max_cpu_loras: int | None = Field(
        None, ge=1, description="Adapters kept in CPU memory (vLLM max_cpu_loras, ≥ max_loras); vLLM's default "
        "(max_loras) when unset.",
    )

    @model_validator(mode="after")
    def _limits(self) -> LoraConfig:
        if self.max_rank not in VLLM_LORA_RANKS:
            raise ValueError(f"lora.max_rank {self.max_rank} is not one of vLLM's ranks {list(VLLM_LORA_RANKS)}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"lora.max_cpu_loras ({self.max_cpu_loras}) < lora.max_loras ({self.max_loras})")
        return self


def migrate_adapters(value: object) -> object:
    """The list form (`[a, b]`) as the map form (`{a: {}, b: {}}`); duplicates refused."""
    if isinstance(value, (list, tuple)):
        names = [str(v) for v in value]
        if len(set(names)) != len(names):
            raise ValueError("duplicate adapters")
        return {n: {} for n in names}
    return {k: ({"source": v} if isinstance(v, str) else v) for k, v in value.items()} \
        if isinstance(value, dict) else value


def lora_enabled(lora: LoraConfig, adapters: dict[str, AdapterSpec]) -> bool:
    return lora.enabled if lora.enabled is not None else bool(adapters)


def check_lora(lora: LoraConfig, adapters: dict[str, AdapterSpec], engine_kwargs: dict[str, object]) -> None:
    """The checks that need the whole model section (raises ValueError)."""
    if bad := sorted(LORA_KWARGS & set(engine_kwargs)):
        raise ValueError(f"{', '.join(bad)}: set by owc from the model's `lora:` and `adapters:`; not engine_kwargs")
    if lora.enabled is False and adapters:
        raise ValueError("adapters are declared but lora.enabled is false")


def lora_engine_kwargs(lora: LoraConfig, adapters: dict[str, AdapterSpec]) -> dict[str, object]:
    """vLLM's LoRA arguments for a model (empty when LoRA is off): what vLLM's parser checks
    in `owc config validate` and what the launcher passes. Declared adapters with a source
    are loaded at start (lora_modules). An adapter's candidate is not: vLLM refuses to start when
a static LoRA fails to load, and a broken retrained adapter must not stop the model from
serving; the gateway loads it on each replica on demand (docs/rollouts.md)."""
    if not lora_enabled(lora, adapters):
        return {}
    kwargs: dict[str, object] = {"enable_lora": True, "max_loras": lora.max_loras, "max_lora_rank": lora.max_rank}
    if lora.max_cpu_loras is not None:
        kwargs["max_cpu_loras"] = lora.max_cpu_loras
    modules = [{"name": n, "path": a.source} for n, a in adapters.items() if a.source]
    if modules:
        kwargs["lora_modules"] = modules
    return kwargs
