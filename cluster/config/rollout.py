"""A model's candidate version and how it is rolled out (docs/rollouts.md).

`candidate:` overrides some of the model's own keys (the new version); `rollout:` says how
the candidate's share of traffic grows and which gates it must pass against stable at each
step (cluster.capacity.rollout analyses them). An adapter's `candidate:` is a retrained
adapter rolled out by the same machinery among the requests that name the adapter."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from cluster.config.base import StrictModel

if TYPE_CHECKING:  # the model section imports this module
    from cluster.config.schema import ModelConfig, OwcConfig

# The model keys a candidate may override; everything else is inherited from the model.
CANDIDATE_KEYS = ("source", "engine_kwargs", "engine_env", "replicas", "adapters", "lora")


class Gates(StrictModel):
    """Each gate compares the candidate with stable over one step's window."""

    max_error_rate_ratio: float = Field(
        1.5, ge=1, description="Fails when the candidate's 5xx share > this × stable's + 0.5 percentage points.",
    )
    max_ttft_p95_ratio: float = Field(
        1.5, ge=1, description="Fails when the candidate's TTFT p95 > this × stable's AND > stable's + min_delta_s.",
    )
    max_itl_p95_ratio: float = Field(
        1.5, ge=1, description="Fails when the candidate's inter-token latency p95 > this × stable's AND > "
        "stable's + min_delta_s.",
    )
    min_delta_s: float = Field(
        0.05, ge=0, description="Seconds a latency p95 must exceed stable's by, besides the ratio, to fail its gate.",
    )
    min_requests: int = Field(
        50, ge=1, description="Requests each version must have served in a step's window before its gates decide: "
        "with fewer the window runs on (a p95 of a few samples is one slow request; a fresh engine's first ones are "
        "slow). None served at all pauses the step.",
    )


class Rollout(StrictModel):
    """How a candidate's share of the model's traffic grows, step by step, each step analysed."""

    steps: list[int] = Field(
        default_factory=lambda: [10, 50],
        description="The candidate's % of the model's traffic in each analysed step, increasing, each in 1..100; "
        "a trailing 100 is allowed and means the promotion itself.",
    )
    step_s: float = Field(300.0, ge=5, description="Seconds each step is analysed against stable (its window).")
    mirror: bool = Field(
        False, description="The candidate gets copies of a share of stable's traffic (each step's weight: the % "
        "of requests copied), its answers read for the gates and discarded; every client is answered by stable. "
        "The promotion then moves all traffic to the candidate as usual.",
    )
    mirror_queue: int = Field(
        64, ge=1, le=10_000, description="Mirror mode: copies of this model pending at once (sent to the candidate, "
        "not answered yet) per gateway process; a copy beyond is dropped (owc_rollout_mirror_dropped_total), never "
        "waited for.",
    )
    sticky: bool = Field(
        True, description="A session (x-session-id, else the body's `user`) keeps its version; requests with "
        "neither are split per request.",
    )
    conformance: bool = Field(
        True, description="`owc conformance` candidate vs stable, API surface only, before step 1; a failed row "
        "aborts the rollout before the candidate serves a request.",
    )
    gates: Gates = Field(default_factory=Gates, description="The gates each step must pass.")

    @field_validator("steps")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("rollout.steps: at least one step")
        if any(not 1 <= s <= 100 for s in v):
            raise ValueError("rollout.steps: each step is a % in 1..100")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("rollout.steps: strictly increasing")
        if 100 in v[:-1] or (len(v) == 1 and v[0] == 100):
            raise ValueError("rollout.steps: 100 only as the last step, after an analysed one")
        return v

    @property
    def analysed_steps(self) -> list[int]:
        """The steps analysed before the promotion (a trailing 100 is the promotion itself)."""
        return self.steps[:-1] if self.steps[-1] == 100 else list(self.steps)


class Candidate(StrictModel):
    """The new version of a model: the keys given override the model's; the rest is inherited."""

    source: str | None = Field(None, min_length=1, description="The candidate's weights (as the model's `source`).")
    engine_kwargs: dict[str, object] | None = Field(
        None, description="The candidate's vLLM arguments, replacing the model's (as the model's `engine_kwargs`).",
    )
    engine_env: dict[str, str] | None = Field(None, description="The candidate engine's environment variables.")
    replicas: dict[str, int] | None = Field(None, description="The candidate's replica bounds (as `replicas`).")
    adapters: dict[str, object] | None = Field(None, description="The candidate's LoRA adapters (as `adapters`).")
    lora: dict[str, object] | None = Field(None, description="The candidate engine's LoRA limits (as `lora`).")
    image: str | None = Field(
        None, min_length=1, description="Kubernetes only (the chart): the candidate engine's image. Its engines then "
        "run in a worker group of their own with that image, pinned there by `ray_resources` (the chart sets it).",
    )
    ray_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each candidate replica takes IN PLACE OF its CPUs "
        "(its GPUs stay): it runs only on nodes that offer them. The chart sets it with `image` to the resource of "
        "the candidate's own worker group, whose pods offer Ray no CPU, so no other replica lands there.",
    )

    def overrides(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in CANDIDATE_KEYS if getattr(self, k) is not None}


class AdapterCandidate(StrictModel):
    source: str = Field(..., min_length=1, description="The retrained adapter's files (as the adapter's `source`).")


def candidate_model(model: ModelConfig) -> ModelConfig:
    """The candidate as a whole model section: the model's keys with the candidate's over them
    (validated as the model is: a bad override is an error naming `candidate`)."""
    if model.candidate is None:
        raise ValueError("the model has no candidate")
    data = model.model_dump(exclude={"candidate"})
    data.update(model.candidate.overrides())
    return type(model).model_validate(data)


def has_rollout(model: ModelConfig) -> bool:
    """The model has a candidate version (of itself or of one of its adapters) to roll out."""
    return model.candidate is not None or any(a.candidate is not None for a in model.adapters.values())


def rollout_targets(config: OwcConfig) -> dict[str, tuple[str, str | None]]:
    """Each rollout by its key, the name it is known by (state, admin API, `owc rollout`): a
    model's own candidate under the model's name, an adapter's candidate under the adapter's
    name (a served name too; names are unique across models and adapters) -> (model, adapter
    or None). A model has at most one rollout (the config refuses more)."""
    out: dict[str, tuple[str, str | None]] = {}
    for name, m in config.models.items():
        if m.candidate is not None:
            out[name] = (name, None)
        out.update({a: (name, a) for a, spec in m.adapters.items() if spec.candidate is not None})
    return out


def rollout_fingerprint(config: OwcConfig, key: str) -> str:
    """What a rollout's state belongs to: a hash of the candidate and `rollout:` sections as
    written (unset keys left out, so a new owc default does not change it). A state document
    of another fingerprint is another candidate's (the config changed): not taken over."""
    import hashlib
    import json

    model, adapter = rollout_targets(config)[key]
    m = config.models[model]
    cand = m.adapters[adapter].candidate if adapter is not None else m.candidate
    doc = {"adapter": adapter, "candidate": cand.model_dump(mode="json", exclude_unset=True),
           "rollout": m.rollout.model_dump(mode="json", exclude_unset=True)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def candidates(config: OwcConfig) -> dict[str, ModelConfig]:
    """Each model's candidate version, as a whole model section."""
    return {n: candidate_model(m) for n, m in config.models.items() if m.candidate is not None}
