"""Load scenarios as YAML: what to send (prompts, turns, shared prefixes, output lengths),
how it arrives (closed loop, constant rate, Poisson, bursts; optional sweep), and the SLO
that goodput is measured against. Strict, like the owc config."""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

# The shipped scenarios: package data, found by name.
SCENARIOS = resources.files("cluster.bench").joinpath("scenarios")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Arrival(_Strict):
    kind: Literal["closed", "constant", "poisson", "bursts"] = Field(..., description="Arrival process.")
    concurrency: int = Field(8, ge=1, description="closed: workers sending back to back.")
    rate: float | None = Field(None, gt=0, description="constant/poisson: conversations per second.")
    burst_size: int = Field(8, ge=1, description="bursts: conversations released together.")
    burst_interval_s: float = Field(2.0, gt=0, description="bursts: seconds between bursts.")
    seed: int = Field(0, description="Seed of the Poisson gaps.")

    @model_validator(mode="after")
    def _rate_needed(self) -> Arrival:
        if self.kind in ("constant", "poisson") and self.rate is None:
            raise ValueError(f"arrival.rate is required for kind {self.kind}")
        return self

    def start_times(self, n: int) -> list[float] | None:
        """Offsets (s) at which the n conversations start; None for a closed loop."""
        if self.kind == "closed":
            return None
        if self.kind == "constant":
            return [i / self.rate for i in range(n)]
        if self.kind == "poisson":
            rng = random.Random(self.seed)
            t, out = 0.0, []
            for _ in range(n):
                out.append(t)
                t += rng.expovariate(self.rate)
            return out
        return [(i // self.burst_size) * self.burst_interval_s for i in range(n)]


class Prompts(_Strict):
    texts: list[str] = Field(..., min_length=1, description="User turns, used in rotation.")
    system: str | None = Field(None, description="System message (chat).")
    shared_prefix: str | None = Field(
        None, description="A document every conversation starts with (prefix-cache workloads)."
    )
    prefix_variants: int = Field(1, ge=1, description="Distinct shared documents, conversation i gets i % n.")
    turns: int = Field(1, ge=1, description="Requests per conversation; later turns carry the history.")
    max_tokens: int = Field(64, ge=1, description="Output tokens per request (ignore_eos: exactly this many).")


class SLOConfig(_Strict):
    ttft_s: float = Field(1.0, gt=0, description="Time to first token bound.")
    itl_s: float = Field(0.1, gt=0, description="Mean inter-token latency bound.")


class Scenario(_Strict):
    name: str
    description: str
    endpoint: Literal["chat", "completions"] = "chat"
    stream: bool = True
    conversations: int = Field(..., ge=1, description="Conversations per run (requests = conversations x turns).")
    arrival: Arrival
    prompts: Prompts
    slo: SLOConfig = Field(default_factory=SLOConfig)
    sweep: list[float] | None = Field(
        None, description="Optional: run once per value, as the concurrency (closed) or rate (open)."
    )

    def at(self, value: float) -> Scenario:
        """This scenario at one sweep value."""
        field = "concurrency" if self.arrival.kind == "closed" else "rate"
        arrival = self.arrival.model_copy(update={field: int(value) if field == "concurrency" else float(value)})
        return self.model_copy(update={"arrival": arrival, "sweep": None})

    def first_messages(self, i: int) -> list[dict]:
        p = self.prompts
        msgs: list[dict] = []
        system = "\n\n".join(x for x in (p.system, self._prefix(i)) if x)
        if system:
            msgs.append({"role": "system", "content": system})
        msgs.append({"role": "user", "content": p.texts[i % len(p.texts)]})
        return msgs

    def next_turn(self, i: int, turn: int) -> str:
        return self.prompts.texts[(i + turn) % len(self.prompts.texts)]

    def _prefix(self, i: int) -> str | None:
        p = self.prompts
        if not p.shared_prefix:
            return None
        variant = i % p.prefix_variants
        return p.shared_prefix if variant == 0 else f"[document {variant}]\n{p.shared_prefix}"

    def completion_prompt(self, i: int) -> str:
        return "\n\n".join(m["content"] for m in self.first_messages(i))


def shipped_scenarios() -> list[str]:
    """Names of the shipped scenarios, sorted."""
    return sorted(f.name.removesuffix(".yaml") for f in SCENARIOS.iterdir() if f.name.endswith(".yaml"))


def load_scenario(name_or_path: str) -> Scenario:
    """A YAML file's scenario, or a shipped one by name."""
    path = Path(name_or_path)
    source = path if path.exists() else SCENARIOS.joinpath(f"{name_or_path}.yaml")
    if not source.is_file():
        known = ", ".join(shipped_scenarios())
        raise FileNotFoundError(f"no scenario {name_or_path!r} (known: {known})")
    return Scenario.model_validate(yaml.safe_load(source.read_text()))
