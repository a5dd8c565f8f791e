"""The routing pipeline: filters -> weighted scorers -> picker, one per model, built from
the model's `routing:` config by plugin name. Each plugin's time is appended to a list the
caller passes (``timings``), which the gateway records as a histogram once the request is
done: nothing but the decision runs inside the decision."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cluster.discovery.endpoints import Endpoint
from cluster.routing import plugins
from cluster.routing.plugins import PluginParams
from cluster.routing.stats import StatsStore
from cluster.routing.types import ReplicaView, RequestInfo

Timings = list[tuple[str, float]]  # (plugin, seconds) in the order they ran


@dataclass(frozen=True)
class RouterSpec:
    """One model's routing, resolved: plugin names, weights and parameters (the config's
    `routing:` section turns into this; routing itself never reads the config)."""

    filters: tuple[str, ...]
    scorers: Mapping[str, float]
    picker: str
    params: Mapping[str, PluginParams] = field(default_factory=dict)
    label: str = "custom"  # the policy name in metrics
    max_retries: int = 2

    def param(self, plugin: str) -> PluginParams:
        return self.params.get(plugin) or plugins.PLUGINS[plugin].params()


class Router:
    def __init__(self, spec: RouterSpec, *, rng: random.Random | None = None):
        rng = rng or random.Random()
        self.policy = spec.label
        self.max_retries = spec.max_retries
        self.uses_prefix = spec.scorers.get("prefix_affinity", 0) > 0  # the prompt prefix key is needed
        # The prompt prefix key's length, when a scorer reads the key (rendering it is per-request work).
        self.prefix_chars: int | None = spec.param("prefix_affinity").prefix_chars if self.uses_prefix else None
        self._filters = [(f"filter:{n}", plugins.build(n, spec.param(n), rng)) for n in spec.filters]
        self._scorers = [(f"scorer:{n}", plugins.build(n, spec.param(n), rng), w) for n, w in spec.scorers.items() if w > 0]
        self._picker_name = f"picker:{spec.picker}"
        self._picker = plugins.build(spec.picker, spec.param(spec.picker), rng)

    @property
    def plugins(self) -> list[str]:
        return [n for n, _ in self._filters] + [n for n, _, _ in self._scorers] + [self._picker_name]

    def pick(self, views: Sequence[ReplicaView], req: RequestInfo, timings: Timings | None = None) -> ReplicaView | None:
        """The chosen replica; None when no candidate is left. Raises QueueFull."""
        clock = time.perf_counter
        took = timings.append if timings is not None else (lambda item: None)
        cands = list(views)
        for name, f in self._filters:
            t0 = clock()
            cands = f(cands, req)
            took((name, clock() - t0))
        if not cands:
            return None
        if len(cands) == 1:
            return cands[0]
        total = [0.0] * len(cands)
        for name, scorer, w in self._scorers:
            t0 = clock()
            for i, s in enumerate(scorer(cands, req)):
                total[i] += w * s
            took((name, clock() - t0))
        t0 = clock()
        chosen = cands[self._picker(cands, total)]
        took((self._picker_name, clock() - t0))
        return chosen


class NoReplica(Exception):
    pass


class Routing:
    """Every model's router, the shared stats store and this gateway's in-flight counts
    (taken with ``acquire`` when a request is sent to a replica, given back with ``release``)."""

    def __init__(
        self, routers: Mapping[str, Router], *, stats: StatsStore, clock: Callable[[], float] = time.monotonic
    ):
        self._routers = dict(routers)
        self.stats = stats
        self._clock = clock
        self._in_flight: dict[str, int] = defaultdict(int)

    @classmethod
    def build(cls, specs: Mapping[str, RouterSpec], *, stats: StatsStore,
              rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> Routing:
        return cls({m: Router(s, rng=rng) for m, s in specs.items()}, stats=stats, clock=clock)

    def acquire(self, replica_id: str) -> None:
        """A request of this gateway is now on the replica."""
        self._in_flight[replica_id] += 1

    def release(self, replica_id: str) -> None:
        """That request is done (answered, failed or abandoned)."""
        left = self._in_flight[replica_id] - 1
        if left > 0:
            self._in_flight[replica_id] = left
        else:
            self._in_flight.pop(replica_id, None)

    def in_flight(self, replica_id: str) -> int:
        return self._in_flight.get(replica_id, 0)

    def policy(self, model: str) -> str:
        return self._routers[model].policy

    def plugins(self) -> list[str]:
        return sorted({p for r in self._routers.values() for p in r.plugins})

    def max_retries(self, model: str) -> int:
        return self._routers[model].max_retries

    def prefix_chars(self, model: str) -> int | None:
        """How much of the prompt the model's prefix key takes; None when no scorer reads it."""
        return self._routers[model].prefix_chars

    def views(self, endpoints: Sequence[Endpoint], exclude: frozenset[str] = frozenset()) -> list[ReplicaView]:
        now = self._clock()
        return [
            ReplicaView(endpoint=e, in_flight=self._in_flight.get(e.replica_id, 0), stats=self.stats.stats(e.replica_id, now),
                        healthy=self.stats.healthy(e.replica_id, now))
            for e in endpoints if e.replica_id not in exclude
        ]

    def choose(self, endpoints: Sequence[Endpoint], req: RequestInfo, exclude: frozenset[str] = frozenset(),
               timings: Timings | None = None) -> Endpoint:
        """Raises NoReplica, or filters.QueueFull."""
        view = self._routers[req.model].pick(self.views(endpoints, exclude), req, timings)
        if view is None:
            raise NoReplica(req.model)
        return view.endpoint

    def adapters_of(self, replica_id: str) -> frozenset[str]:
        """The LoRA adapters the replica's last stats say it holds (empty when none are known)."""
        s = self.stats.stats(replica_id, self._clock())
        return s.adapters if s is not None else frozenset()

    def failed(self, replica_id: str) -> None:
        """A request could not reach the replica or lost it: out until it scrapes healthy."""
        self.stats.failed(replica_id, self._clock())
