"""What the capacity controller sizes: the engine deployment of each model with
``autoscaling.enabled``, and the gateway (`owc-gateway`) when gateway.replicas.max > min.
Each with its pure policy, the rebuild of its windows from history, and how far back that
history reaches. The key is the model's name (``owc-gateway`` for the gateway): what the
signals, the actuators and the controller's `model` label go by."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cluster.capacity import gateway_policy, policy
from cluster.capacity.gateway_policy import GATEWAY
from cluster.capacity.policy import Decision, PolicyState
from cluster.config.schema import OwcConfig


@dataclass(frozen=True)
class Target:
    key: str
    decide: Callable[[Any, int, PolicyState, float], Decision]  # (signals, current, state, now)
    # (history [(t, signals)], current, now, step_s, last_up, last_down) -> state
    rebuild: Callable[[Sequence[tuple[float, Any]], int, float, float, float | None, float | None], PolicyState]
    history_s: float


def engine_target(cfg: OwcConfig, model: str) -> Target:
    mc = cfg.models[model]
    s, b = mc.autoscaling, mc.replicas
    return Target(
        key=model,
        decide=lambda sig, current, state, now: policy.decide(sig, current=current, settings=s, bounds=b,
                                                              state=state, now=now),
        rebuild=lambda hist, current, now, step, up, down: policy.rebuild(
            hist, current=current, settings=s, bounds=b, now=now, step_s=step, last_up=up, last_down=down),
        history_s=policy.history_s(s),
    )


def gateway_target(cfg: OwcConfig) -> Target:
    s, b = cfg.gateway.autoscaling, cfg.gateway.replicas
    return Target(
        key=GATEWAY,
        decide=lambda sig, current, state, now: gateway_policy.decide(sig, current=current, settings=s, bounds=b,
                                                                      state=state, now=now),
        rebuild=lambda hist, current, now, step, up, down: gateway_policy.rebuild(
            hist, current=current, settings=s, bounds=b, now=now, step_s=step, last_up=up, last_down=down),
        history_s=gateway_policy.history_s(s),
    )


def targets(cfg: OwcConfig) -> list[Target]:
    out = [engine_target(cfg, m) for m, mc in cfg.models.items() if mc.autoscaling.enabled]
    if cfg.gateway.replicas.autoscaled:
        if GATEWAY in cfg.models and cfg.models[GATEWAY].autoscaling.enabled:
            raise ValueError(f"a model named {GATEWAY!r} and gateway autoscaling: the controller's targets collide")
        out.append(gateway_target(cfg))
    return out
