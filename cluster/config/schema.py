"""The one owc config schema: models, parallelism, gateway, keys, limits.

Strict everywhere (``extra="forbid"``): an unknown key is an error that names its path.
Nothing here imports vLLM or Ray, so `owc config validate` runs in the chart CI and the
controller image; vLLM's own argument check is layered on in ``cluster.engine.args``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from cluster.config.adapters import AdapterSpec, LoraConfig, check_lora, migrate_adapters
from cluster.config.autoscaling import Autoscaling
from cluster.config.base import DEMO_MODELS, DEMO_SCHEME
from cluster.config.base import NAME as _NAME
from cluster.config.base import StrictModel
from cluster.config.batch import BatchConfig
from cluster.config.auth import JwtConfig, TenantConfig, TenantLimits
from cluster.config.gateway import AccessLog, GatewayConfig, Limits, Tracing
from cluster.config.routing import RoutingConfig, RoutingStats
from cluster.config.responses import ReasoningPolicy, ResponsesStore
from cluster.config.rollout import Candidate, Rollout, candidate_model

PP_UNSUPPORTED = (
    "pipeline_parallel_size > 1 is not supported on GPUs yet: the engine's placement group is not handed to "
    "vLLM, so the other stages' GPUs would be reserved and unused; use tensor_parallel_size"
)

# engine_kwargs that would move the engine's door (owc's guard, its address, or a vLLM config
# file that could set either): never from config.
ENGINE_DOOR_KWARGS = frozenset({"api_key", "middleware", "host", "port", "uds", "config"})

__all__ = [
    "AccessLog", "Accelerator", "Autoscaling", "EngineNetwork", "GatewayConfig", "Limits", "ModelConfig", "Monitoring",
    "OwcConfig", "RayConfig", "Replicas", "RoutingConfig", "RoutingStats", "StrictModel", "TenantLimits", "Tracing",
    "JwtConfig", "TenantConfig",
]


class Replicas(StrictModel):
    min: int = Field(1, ge=0, description="Fewest engine replicas kept running.")
    max: int = Field(1, ge=1, description="Most engine replicas the deployment may run.")
    initial: int | None = Field(
        None, ge=0, description="Replicas started with; defaults to `min` (at least 1)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"replicas.min ({self.min}) > replicas.max ({self.max})")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise ValueError("replicas.initial must lie within [min, max]")
        return self

    @property
    def start(self) -> int:
        return self.initial if self.initial is not None else max(self.min, 1)


class Accelerator(StrictModel):
    kind: Literal["cpu", "gpu"] = Field("cpu", description="Where the engine runs.")
    type: str | None = Field(
        None,
        description="Ray accelerator type for GPU placement (e.g. H100, H200, A100); "
        "None places on any GPU.",
    )

    @model_validator(mode="after")
    def _type_only_for_gpu(self) -> Accelerator:
        if self.kind == "cpu" and self.type is not None:
            raise ValueError("accelerator.type is only meaningful with kind: gpu")
        return self


class ModelConfig(StrictModel):
    source: str = Field(
        ...,
        min_length=1,
        description="Weights: a local directory, a hub id (GPU users with network), or a model owc builds "
        "locally, offline: `demo:tiny-llama` (random weights) or `demo:tiny-gpt-oss` (a tiny gpt-oss whose "
        "weights follow the harmony frame: reasoning, final answer, tool calls).",
    )
    aliases: list[str] = Field(default_factory=list, description="Other names that select this model.")
    adapters: dict[str, AdapterSpec] = Field(
        default_factory=dict,
        description="LoRA adapters served on this model's engines, by name: `{name: {source: dir-or-hub-id}}` "
        "(the list form `[name]` of old: adapters the engine has already). Every replica loads them at start; "
        "more are added at run time (`owc adapter add`). A request naming one goes to this model's replicas, "
        "preferring those that have it loaded (routing: adapter_loaded, lora_affinity), and the gateway loads it "
        "on the chosen replica when none has; the name reaches the engine unchanged.",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="The engine's LoRA limits (vLLM's LoRA flags).")
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="TP ranks, packed on one node.")
    pipeline_parallel_size: int = Field(
        1, ge=1, le=16,
        description="PP stages. GPUs: only 1 for now (the placement group does not reach vLLM yet).",
    )
    max_model_len: int | None = Field(None, ge=16, description="Context length in tokens; engine default when unset.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description="Weights/activations dtype.")
    engine_kwargs: dict[str, object] = Field(
        default_factory=dict,
        description="vLLM engine and server (frontend) arguments by their Python names, as `vllm serve` "
        "takes them: engine ones (max_num_seqs, async_scheduling) and server ones (tool_call_parser, "
        "enable_auto_tool_choice, reasoning_parser) alike; true/false for flags, YAML maps for vLLM's JSON arguments "
        "(compilation_config), null for vLLM's default. `owc config validate` checks names and values with vLLM's own parser where vLLM is "
        "installed. owc's own settings (model, parallelism, max_model_len, dtype, the engine's address and key) "
        "are refused.",
    )
    engine_env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for the engine process."
    )
    replicas: Replicas = Field(default_factory=Replicas, description="Replica bounds.")
    accelerator: Accelerator = Field(default_factory=Accelerator, description="Accelerator kind.")
    cpus_per_replica: float = Field(
        1.0, gt=0, description="Logical Ray CPUs reserved per replica (the engine's CPU budget)."
    )
    startup_timeout_s: float = Field(600.0, gt=0, description="Seconds an engine may take to become healthy.")
    health_probe_timeout_s: float = Field(
        10.0, gt=0, le=25,
        description="Seconds the engine's /health may take to answer in each of Ray Serve's health checks (every 5 s); "
        "after three failed checks in a row Serve replaces the replica. Lower: a hung engine is replaced sooner; "
        "higher: an engine on an overloaded node is not taken for a hung one.",
    )
    routing: RoutingConfig = Field(default_factory=RoutingConfig, description="How the gateway picks this model's replica.")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="Capacity controller settings.")
    reasoning: ReasoningPolicy = Field(default_factory=ReasoningPolicy, description="Reasoning exposure to clients.")
    responses_store: ResponsesStore = Field(
        default_factory=ResponsesStore, description="Stored responses (previous_response_id, retrieval), bounded.",
    )
    resume_streams: bool = Field(
        True,
        description="A chat or completions stream whose engine dies after its first byte is continued on another "
        "replica from the token ids the client already has (the client sees one stream); for gpt-oss, chat streams "
        "with reasoning and tool calls and Responses streams too. Streams that cannot be resumed (n > 1, logprobs, "
        "stop strings; tools, structured outputs and reasoning parsers other than gpt-oss's) end with an SSE error "
        "event, as they do when this is off.",
    )
    candidate: Candidate | None = Field(
        None, description="A new version of this model, rolled out by `rollout:` against the current (stable) one: "
        "overrides any of source, engine_kwargs, engine_env, replicas, adapters, lora (and the image on Kubernetes); "
        "everything else is inherited (docs/rollouts.md).",
    )
    rollout: Rollout = Field(default_factory=Rollout, description="How a candidate (the model's or an adapter's) "
                             "is rolled out: steps, windows, gates.")

    @field_validator("adapters", mode="before")
    @classmethod
    def _adapters_map(cls, v: object) -> object:
        return migrate_adapters(v)

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, v: dict[str, AdapterSpec]) -> dict[str, AdapterSpec]:
        for a in v:
            if not _NAME.match(a):
                raise ValueError(f"invalid adapter name {a!r}")
        return v

    @field_validator("source")
    @classmethod
    def _known_demo(cls, v: str) -> str:
        if v.startswith(DEMO_SCHEME) and v[len(DEMO_SCHEME):] not in DEMO_MODELS:
            known = ", ".join(DEMO_SCHEME + n for n in DEMO_MODELS)
            raise ValueError(f"unknown demo model {v!r}; known: {known} (or a local path, or a hub id)")
        return v

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, v: list[str]) -> list[str]:
        for a in v:
            if not _NAME.match(a):
                raise ValueError(f"invalid alias {a!r}")
        if len(set(v)) != len(v):
            raise ValueError("duplicate aliases")
        return v

    @field_validator("engine_kwargs")
    @classmethod
    def _door_is_owcs(cls, v: dict[str, object]) -> dict[str, object]:
        if bad := sorted(ENGINE_DOOR_KWARGS & set(v)):
            raise ValueError(f"{', '.join(bad)}: set by owc (the engine's guard and address); not engine_kwargs")
        return v

    @model_validator(mode="after")
    def _no_gpu_pipeline_parallelism(self) -> ModelConfig:
        if self.accelerator.kind == "gpu" and self.pipeline_parallel_size > 1:
            raise ValueError(PP_UNSUPPORTED)
        check_lora(self.lora, self.adapters, self.engine_kwargs)
        if self.candidate is not None:
            try:
                candidate_model(self)
            except ValidationError as e:  # each problem at its path under candidate
                raise ValueError("; ".join(f"candidate.{'.'.join(map(str, err['loc']))}: {err['msg']}"
                                           for err in e.errors())) from None
        rolled = [n for n, a in self.adapters.items() if a.candidate is not None]
        if rolled and self.candidate is not None or len(rolled) > 1:  # the version label has one meaning per model
            what = ["the model's candidate"] * (self.candidate is not None) + [f"adapters.{n}.candidate" for n in rolled]
            raise ValueError(f"one rollout per model at a time: {', '.join(what)}")
        if rolled and self.rollout.mirror:  # copies would need the LoRA renamed off the client's path too
            raise ValueError(f"rollout.mirror: not built for an adapter's candidate (adapters.{rolled[0]}.candidate)")
        return self

    @property
    def wakes_on_request(self) -> bool:
        """Scaled to zero by the controller, a request for this model wakes it."""
        return self.autoscaling.enabled and self.replicas.min == 0

    @property
    def parses_chat_output(self) -> bool:
        """The engine parses this model's chat output (a reasoning parser, gpt-oss's harmony
        format): a chat stream's text is not the tokens' text, so it cannot be resumed."""
        return bool(self.engine_kwargs.get("reasoning_parser")) or any(
            m in self.source.lower() for m in ("gpt-oss", "gpt_oss"))

    def harmony(self, name: str) -> bool:
        """gpt-oss, served as ``name``: its chat and Responses output is harmony (named so, or
        served with gpt-oss's parsers); its streams are resumed by reading harmony."""
        kw = self.engine_kwargs
        return any(m in s.lower() for s in (name, self.source) for m in ("gpt-oss", "gpt_oss")) \
            or kw.get("reasoning_parser") == "openai_gptoss" or kw.get("tool_call_parser") == "openai"

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


class RayConfig(StrictModel):
    address: str | None = Field(
        None, description="Existing Ray cluster to join; None starts a private local one."
    )
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of a local Ray (default: enough for the config)."
    )
    object_store_memory: int = Field(256 << 20, ge=75 << 20, description="Local Ray object store bytes.")


class EngineNetwork(StrictModel):
    bind_host: str = Field(
        "127.0.0.1",
        description="Address engine servers bind. 0.0.0.0 on multi-node clusters (Kubernetes): each replica "
        "then registers its node's IP, so gateways on other nodes reach it.",
    )
    port: int | None = Field(
        None, ge=1024, le=65535,
        description="Fixed engine server port (Kubernetes: one replica per worker pod, scraped through a "
        "named container port). A free port per replica when unset.",
    )


class Monitoring(StrictModel):
    file_sd_dir: str | None = Field(
        "~/.cache/owc/prometheus-targets",
        description="Local mode: directory where the gateway replicas and Ray's metrics port are listed as "
        "Prometheus file-SD targets (`owc monitor` scrapes it). None disables it (Kubernetes uses monitors).",
    )


class OwcConfig(StrictModel):
    models: dict[str, ModelConfig] = Field(..., min_length=1, description="Served models keyed by served name.")
    gateway: GatewayConfig = Field(default_factory=GatewayConfig, description="The OpenAI gateway.")
    ray: RayConfig = Field(default_factory=RayConfig, description="The Ray cluster.")
    engine_network: EngineNetwork = Field(default_factory=EngineNetwork, description="How engine servers listen.")
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Metrics discovery in local mode.")
    batch: BatchConfig = Field(default_factory=BatchConfig, description="The Batch API: files, batches (docs/batch.md).")
    model_cache_dir: str = Field(
        "~/.cache/owc/models", description="Where `demo:` models are built and cached."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> OwcConfig:
        seen: dict[str, str] = {}
        for name, m in self.models.items():
            if not _NAME.match(name):
                raise ValueError(f"invalid model name {name!r}")
            for n in (name, *m.aliases, *m.adapters):
                if n in seen:
                    raise ValueError(f"model name {n!r} used by both {seen[n]!r} and {name!r}")
                seen[n] = name
        for tenant, t in self.gateway.tenants.items():
            for m in t.models or ():
                if m not in self.models:
                    raise ValueError(f"gateway.tenants.{tenant}.models: {m!r} is not a served model")
            for a in t.adapters or ():
                if not any(a in mc.adapters for mc in self.models.values()):
                    raise ValueError(f"gateway.tenants.{tenant}.adapters: {a!r} is no model's adapter")
        return self

    def resolve(self, name: str) -> str | None:
        """Served name for a requested model name or alias; None when unknown."""
        if name in self.models:
            return name
        for served, m in self.models.items():
            if name in m.aliases or name in m.adapters:
                return served
        return None
