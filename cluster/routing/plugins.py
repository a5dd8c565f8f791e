"""The routing plugin registry: every filter, scorer and picker by name, with the factory
that builds it from its parameters. The config schema takes its plugin names (and each
plugin's parameter model) from here, so a plugin added here is configurable at once.
Pure: nothing here does I/O."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cluster.routing import filters as F
from cluster.routing import pickers as P
from cluster.routing import scorers as S

Kind = Literal["filter", "scorer", "picker"]


class PluginParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class NoParams(PluginParams):
    pass


class QueueBoundParams(PluginParams):
    """queue_bound filter: refuse (429) when every replica's engine queue is this deep."""

    max_queue_per_replica: int | None = Field(
        64, ge=1,
        description="When every replica has this many requests waiting: 429 queue_full with Retry-After "
        "(None: never).",
    )


class PrefixAffinityParams(PluginParams):
    """prefix_affinity scorer: the prompt-prefix key and its bounded-load spill-over."""

    bounded_load: float = Field(
        2.0, gt=1, le=10,
        description="A home replica above this many times the mean load (requests queued + running) spills to "
        "the key's next choice. Lower balances load sooner and loses cache locality sooner.",
    )
    prefix_chars: int = Field(
        1024, ge=16, le=1 << 20,
        description="The affinity key: this many leading characters of the rendered prompt (~4 per token).",
    )


@dataclass(frozen=True)
class Plugin:
    name: str
    kind: Kind
    params: type[PluginParams]
    # factory(params, rng) -> the filter, scorer or picker callable
    factory: Callable[[Any, random.Random], Callable[..., Any]]


def _keep_all(views, req):  # queue_bound with no bound
    return list(views)


def _plugins() -> dict[str, Plugin]:
    out = [
        Plugin("healthy", "filter", NoParams, lambda p, rng: F.healthy),
        Plugin("not_draining", "filter", NoParams, lambda p, rng: F.not_draining),
        Plugin("adapter_loaded", "filter", NoParams, lambda p, rng: F.adapter_loaded),
        Plugin("queue_bound", "filter", QueueBoundParams,
               lambda p, rng: F.queue_bound(p.max_queue_per_replica) if p.max_queue_per_replica else _keep_all),
        Plugin("least_load", "scorer", NoParams, lambda p, rng: S.least_load),
        Plugin("kv_cache", "scorer", NoParams, lambda p, rng: S.kv_cache),
        Plugin("prefix_affinity", "scorer", PrefixAffinityParams, lambda p, rng: S.prefix_affinity(p.bounded_load)),
        Plugin("session_affinity", "scorer", NoParams, lambda p, rng: S.session_affinity),
        Plugin("lora_affinity", "scorer", NoParams, lambda p, rng: S.lora_affinity),
        Plugin("max_score", "picker", NoParams, lambda p, rng: P.MaxScore()),
        Plugin("round_robin", "picker", NoParams, lambda p, rng: P.RoundRobin()),
        Plugin("p2c", "picker", NoParams, lambda p, rng: P.PowerOfTwo(rng)),
        Plugin("random", "picker", NoParams, lambda p, rng: P.Random(rng)),
    ]
    return {p.name: p for p in out}


PLUGINS: Mapping[str, Plugin] = _plugins()


def names(kind: Kind) -> tuple[str, ...]:
    return tuple(n for n, p in PLUGINS.items() if p.kind == kind)


def with_params() -> dict[str, type[PluginParams]]:
    """Plugins that take parameters: name -> their parameter model."""
    return {n: p.params for n, p in PLUGINS.items() if p.params is not NoParams}


def build(name: str, params: PluginParams | None, rng: random.Random) -> Callable[..., Any]:
    plugin = PLUGINS[name]
    return plugin.factory(params if params is not None else plugin.params(), rng)
