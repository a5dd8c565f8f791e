"""A model's `routing:` section. Plugin names and each plugin's parameters come from the
routing plugin registry (cluster.routing.plugins); the section resolves into the
RouterSpec that routing builds its pipeline from (routing never reads the config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, create_model, field_validator

from cluster.config.base import StrictModel
from cluster.routing.plugins import with_params
from cluster.routing.policies import FILTERS, PICKERS, POLICIES, SCORERS
from cluster.routing.router import RouterSpec

Policy = Literal[tuple(POLICIES)]  # type: ignore[valid-type]
FilterName = Literal[FILTERS]  # type: ignore[valid-type]
ScorerName = Literal[SCORERS]  # type: ignore[valid-type]
PickerName = Literal[PICKERS]  # type: ignore[valid-type]


# One optional section per plugin that takes parameters, built from the registry.
RoutingParams = create_model(
    "RoutingParams",
    __base__=StrictModel,
    __doc__="Parameters of the routing plugins that take any, by plugin name.",
    **{name: (model | None, Field(None, description=(model.__doc__ or f"{name} parameters.").strip()))
       for name, model in with_params().items()},
)


class RoutingConfig(StrictModel):
    policy: Policy = Field(
        "affinity",
        description="Named plugin set: affinity (LoRA batch slots for requests naming an adapter > session > "
        "prefix > load), prefix_affinity, "
        "session_affinity, lora_affinity, least_load (power of two choices), round_robin.",
    )
    filters: list[FilterName] | None = Field(None, description="Override the policy's filters, in order.")
    scorers: dict[ScorerName, float] | None = Field(
        None, description="Override the policy's scorers: plugin name -> weight (>= 0)."
    )
    picker: PickerName | None = Field(None, description="Override the policy's picker.")
    params: RoutingParams = Field(
        default_factory=lambda: RoutingParams(),
        description="Per-plugin parameters, keyed by plugin name (e.g. prefix_affinity: {bounded_load: 2.0}); "
        "each plugin's defaults apply where unset.",
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

    def spec(self) -> RouterSpec:
        """The resolved plugin set: the preset with this section's overrides and parameters."""
        preset = POLICIES[self.policy]
        filters = tuple(self.filters if self.filters is not None else preset["filters"])
        scorers = dict(self.scorers if self.scorers is not None else preset["scorers"])
        params = {n: p for n in with_params() if (p := getattr(self.params, n)) is not None}
        return RouterSpec(filters=filters, scorers=scorers, picker=self.picker or preset["picker"], params=params,
                          label=self.label, max_retries=self.max_retries)


class RoutingStats(StrictModel):
    period_s: float = Field(0.25, gt=0, le=60, description="How often each gateway scrapes every engine's /metrics.")
    stale_after_s: float = Field(
        2.0, gt=0, description="Stats older than this are ignored: routing turns load-blind, never fails."
    )
    timeout_s: float = Field(1.0, gt=0, description="Timeout of one scrape; a failed scrape marks the replica unhealthy.")
    share_across_gateways: bool = Field(
        True, description="With a Redis the gateway processes share (gateway.fair_sharing.store_url, the one `owc "
        "serve` starts, else gateway.store), one process at a time scrapes every engine and the others apply its "
        "rounds as they are published: an engine's scrape load does not grow with the number of gateway processes. "
        "The store down or slow, or no store: each process scrapes for itself (owc_routing_stats_mode).",
    )
