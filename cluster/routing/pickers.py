"""Pickers choose one candidate from the weighted scores. Round-robin and random keep
their own turn counter / random generator (injected for tests)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from cluster.routing.types import ReplicaView


class Picker(Protocol):
    def __call__(self, views: Sequence[ReplicaView], scores: Sequence[float]) -> int: ...


class MaxScore:
    """Highest score; ties go to the lower load, then in turn."""

    def __init__(self) -> None:
        self._turn = 0

    def __call__(self, views: Sequence[ReplicaView], scores: Sequence[float]) -> int:
        best = max(scores)
        tied = [i for i, s in enumerate(scores) if s >= best - 1e-9]
        if len(tied) > 1:
            low = min(views[i].load for i in tied)
            tied = [i for i in tied if views[i].load == low]
        self._turn += 1
        return tied[self._turn % len(tied)]


class RoundRobin:
    """Each candidate in turn, ignoring scores (the turn follows replica ids, so a changing
    candidate set does not reset it)."""

    def __init__(self) -> None:
        self._last: str | None = None

    def __call__(self, views: Sequence[ReplicaView], scores: Sequence[float]) -> int:
        order = sorted(range(len(views)), key=lambda i: views[i].replica_id)
        if self._last is not None:
            for i in order:
                if views[i].replica_id > self._last:
                    self._last = views[i].replica_id
                    return i
        self._last = views[order[0]].replica_id
        return order[0]


class PowerOfTwo:
    """Two candidates drawn at random, the higher score wins (Mitzenmacher's power of two
    choices: near-best balance without herding every gateway onto the same replica)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def __call__(self, views: Sequence[ReplicaView], scores: Sequence[float]) -> int:
        if len(views) == 1:
            return 0
        a, b = self._rng.sample(range(len(views)), 2)
        return a if scores[a] >= scores[b] else b


class Random:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def __call__(self, views: Sequence[ReplicaView], scores: Sequence[float]) -> int:
        return self._rng.randrange(len(views))
