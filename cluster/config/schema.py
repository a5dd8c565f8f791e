"""The one owc config schema: models, parallelism, gateway, keys, limits.

Strict everywhere (``extra="forbid"``): an unknown key is an error that names its path.
Nothing here imports vLLM or Ray, so `owc config validate` runs in the chart CI and the
controller image; vLLM's own argument check is layered on in ``cluster.engine.args``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cluster.routing.policies import FILTERS, PICKERS, POLICIES, SCORERS

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


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


Policy = Literal[tuple(POLICIES)]  # type: ignore[valid-type]
FilterName = Literal[FILTERS]  # type: ignore[valid-type]
ScorerName = Literal[SCORERS]  # type: ignore[valid-type]
PickerName = Literal[PICKERS]  # type: ignore[valid-type]


class RoutingConfig(StrictModel):
    policy: Policy = Field(
        "affinity",
        description="Named plugin set: affinity (session > prefix > LoRA > load), prefix_affinity, "
        "session_affinity, lora_affinity, least_load (power of two choices), round_robin.",
    )
    filters: list[FilterName] | None = Field(None, description="Override the policy's filters, in order.")
    scorers: dict[ScorerName, float] | None = Field(
        None, description="Override the policy's scorers: plugin name -> weight (>= 0)."
    )
    picker: PickerName | None = Field(None, description="Override the policy's picker.")
    bounded_load: float = Field(
        2.0, gt=1, le=10,
        description="Prefix affinity: a home replica above this many times the mean load (requests queued + "
        "running) spills to the key's next choice. Lower balances load sooner and loses cache locality sooner.",
    )
    prefix_chars: int = Field(
        1024, ge=16, le=1 << 20,
        description="Prefix affinity key: this many leading characters of the rendered prompt (~4 per token).",
    )
    max_queue_per_replica: int | None = Field(
        64, ge=1,
        description="queue_bound filter: when every replica has this many requests waiting, 429 with Retry-After.",
    )
    max_retries: int = Field(
        2, ge=0, le=8,
        description="Re-sends to another replica when one fails before the client got a byte.",
    )

    @field_validator("scorers")
    @classmethod
    def _weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and any(w < 0 for w in v.values()):
            raise ValueError("scorer weights must be >= 0")
        return v

    @property
    def custom(self) -> bool:
        return self.filters is not None or self.scorers is not None or self.picker is not None

    @property
    def label(self) -> str:
        """The policy name in metrics: the preset, or `custom` when overridden."""
        return "custom" if self.custom else self.policy

    def plugins(self) -> tuple[list[str], dict[str, float], str]:
        preset = POLICIES[self.policy]
        filters = list(self.filters if self.filters is not None else preset["filters"])
        scorers = dict(self.scorers if self.scorers is not None else preset["scorers"])
        return filters, scorers, self.picker or preset["picker"]


class RoutingStats(StrictModel):
    period_s: float = Field(0.25, gt=0, le=60, description="How often each gateway scrapes every engine's /metrics.")
    stale_after_s: float = Field(
        2.0, gt=0, description="Stats older than this are ignored: routing turns load-blind, never fails."
    )
    timeout_s: float = Field(1.0, gt=0, description="Timeout of one scrape; a failed scrape marks the replica unhealthy.")


class Autoscaling(StrictModel):
    """The capacity controller's policy settings for one model (cluster.capacity.policy)."""

    enabled: bool = Field(False, description="Let `owc controller` drive this model's replica count within `replicas`.")
    target_ongoing_per_replica: float = Field(
        8.0, gt=0, description="Requests in flight per replica the policy sizes for (gateway in-flight + engine queue)."
    )
    target_queue_per_replica: float = Field(
        2.0, ge=0, description="Engine queue per replica above which the model scales up at once."
    )
    target_kv_usage: float = Field(0.9, gt=0, le=1, description="Mean KV-cache use above which it scales up.")
    ttft_slo_s: float = Field(2.0, gt=0, description="TTFT p95 objective; above it, scale up.")
    down_utilization: float = Field(
        0.6, gt=0, lt=1,
        description="Hysteresis: scale down only to replicas the load fits at this fraction of the target.",
    )
    up_cooldown_s: float = Field(30.0, ge=0, description="Least time between two scale-ups.")
    down_cooldown_s: float = Field(120.0, ge=0, description="Least time after any scaling before a scale-down.")
    down_stabilization_s: float = Field(
        300.0, ge=0, description="The load must have fitted fewer replicas this long without a break before a "
        "scale-down, which goes to the most replicas it needed in that time."
    )
    max_step_up: int = Field(4, ge=1, description="Most replicas added in one decision.")
    max_step_down: int = Field(
        1, ge=1, description="Most replicas removed in one decision (further steps follow down_cooldown_s apart)."
    )
    idle_to_zero_s: float | None = Field(
        None, gt=0,
        description="With replicas.min 0: no request for this long scales the model to zero (None: never).",
    )
    wake_timeout_s: float = Field(
        300.0, gt=0, description="Scaled to zero: how long the gateway holds a request while the first replica starts."
    )
    stale_after_s: float = Field(60.0, gt=0, description="Signals older than this count as missing: the policy holds.")
    drain_timeout_s: float = Field(
        600.0, gt=0, description="Scale-down: longest a leaving replica waits for its in-flight requests."
    )


class ModelConfig(StrictModel):
    source: str = Field(
        ...,
        min_length=1,
        description="Weights: a local directory, a hub id (GPU users with network), or "
        "`demo:tiny-llama` for the model owc builds locally with random weights.",
    )
    aliases: list[str] = Field(default_factory=list, description="Other names that select this model.")
    adapters: list[str] = Field(
        default_factory=list,
        description="LoRA adapter names served on this model's engines (vLLM `lora_modules` in engine_kwargs, or "
        "loaded at run time). A request naming one goes to this model's replicas, preferring those that have it "
        "loaded (routing: adapter_loaded, lora_affinity); the name reaches the engine unchanged.",
    )
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="TP ranks, packed on one node.")
    pipeline_parallel_size: int = Field(1, ge=1, le=16, description="PP stages.")
    max_model_len: int | None = Field(None, ge=16, description="Context length in tokens; engine default when unset.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description="Weights/activations dtype.")
    engine_kwargs: dict[str, object] = Field(
        default_factory=dict,
        description="Extra vLLM engine arguments by their Python names (e.g. max_num_seqs); "
        "checked against vLLM's EngineArgs where vLLM is installed.",
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
    routing: RoutingConfig = Field(default_factory=RoutingConfig, description="How the gateway picks this model's replica.")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="Capacity controller settings.")

    @field_validator("aliases", "adapters")
    @classmethod
    def _alias_names(cls, v: list[str]) -> list[str]:
        for a in v:
            if not _NAME.match(a):
                raise ValueError(f"invalid alias {a!r}")
        if len(set(v)) != len(v):
            raise ValueError("duplicate aliases")
        return v

    @property
    def wakes_on_request(self) -> bool:
        """Scaled to zero by the controller, a request for this model wakes it."""
        return self.autoscaling.enabled and self.replicas.min == 0

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


class Limits(StrictModel):
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted (bytes); larger is 413.")
    request_timeout_s: float = Field(600.0, gt=0, description="Upper bound on one request's total time (seconds).")
    connect_timeout_s: float = Field(5.0, gt=0, description="Seconds to open a connection to an engine replica.")


class TenantLimits(StrictModel):
    requests_per_minute: float | None = Field(
        None, gt=0, description="Sustained request rate allowed (token bucket); beyond it 429 with Retry-After."
    )
    burst: int | None = Field(
        None, ge=1, description="Requests allowed at once above the sustained rate (default: a tenth of a minute's worth, at least 1)."
    )
    max_concurrent: int | None = Field(None, ge=1, description="Requests in flight at once; beyond it 429.")


class AccessLog(StrictModel):
    enabled: bool = Field(True, description="Write one JSON line per finished request.")
    path: str | None = Field(None, description="File to append to; stdout when unset.")
    include_prompts: bool = Field(
        False, description="Also log the request's messages/prompt. Off by default: prompts may hold personal data."
    )


class Tracing(StrictModel):
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP traces endpoint (e.g. http://otel-collector:4318/v1/traces); no tracing when unset."
    )
    service_name: str = Field("owc-gateway", description="service.name resource attribute of the gateway's spans.")
    sample_ratio: float = Field(1.0, ge=0, le=1, description="Fraction of new traces sampled (parent decision wins).")


class GatewayConfig(StrictModel):
    host: str = Field("127.0.0.1", description="Address the gateway binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the OpenAI API.")
    replicas: int = Field(1, ge=1, le=64, description="Gateway processes sharing the port (SO_REUSEPORT).")
    api_keys_file: str | None = Field(
        None, description="YAML/JSON file mapping API key -> tenant name."
    )
    api_keys_env: str | None = Field(
        "OWC_API_KEYS",
        description="Environment variable holding `key=tenant,key2=tenant2`; merged with the file.",
    )
    cpus: float = Field(0.5, gt=0, description="Logical Ray CPUs per gateway replica.")
    limits: Limits = Field(default_factory=Limits, description="Request limits.")
    ray_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each gateway replica needs (Kubernetes: pins gateways to their worker group).",
    )
    tenants: dict[str, TenantLimits] = Field(
        default_factory=dict,
        description="Per-tenant limits keyed by tenant name (tenants come from the API keys; `anonymous` without keys).",
    )
    access_log: AccessLog = Field(default_factory=AccessLog, description="Structured access log.")
    tracing: Tracing = Field(default_factory=Tracing, description="OpenTelemetry traces of the request path.")
    routing_stats: RoutingStats = Field(
        default_factory=RoutingStats, description="Engine stats feeding routing, scraped off the request path."
    )

    @property
    def local_host(self) -> str:
        """Where a client on this host reaches the gateway (a wildcard bind answers on loopback)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


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
        return self

    def resolve(self, name: str) -> str | None:
        """Served name for a requested model name or alias; None when unknown."""
        if name in self.models:
            return name
        for served, m in self.models.items():
            if name in m.aliases or name in m.adapters:
                return served
        return None
