"""The routing pipeline: filters -> weighted scorers -> picker, one per model, built from
the model's `routing:` config by plugin name. Each plugin's time is appended to a list the
caller passes (``timings``), which the gateway records as a histogram once the request is
done: nothing but the decision runs inside the decision."""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
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


AdapterRequest = Callable[[str, str, str], None]  # (model, adapter, found) of one adapter request
# What a request for a LoRA adapter found on the replica routing sent it to: the adapter
# running or queued there (active), idle in one of its batch slots (resident), registered
# there but in no slot (registered: the engine swaps it in), not listed there
# (loaded_on_demand: the gateway loads it first), or the replica's stats unknown (unknown).
ADAPTER_FOUND = ("active", "resident", "registered", "loaded_on_demand", "unknown")


def adapter_found(view: ReplicaView, adapter: str) -> str:
    if adapter in view.active_adapters:
        return "active"
    if view.stats is None:
        return "unknown"
    if adapter in view.stats.resident_adapters:
        return "resident"
    return "registered" if adapter in view.stats.adapters else "loaded_on_demand"


class Routing:
    """Every model's router, the shared stats store and this gateway's in-flight counts
    (taken with ``acquire`` when a request is sent to a replica, given back with ``release``),
    in total and per LoRA adapter. ``on_adapter_request`` hears, for each decision on a request
    that names an adapter (one per request, and one per retry), what it found on the chosen
    replica."""

    def __init__(
        self, routers: Mapping[str, Router], *, stats: StatsStore, clock: Callable[[], float] = time.monotonic
    ):
        self._routers = dict(routers)
        self.stats = stats
        self._clock = clock
        self._in_flight: dict[str, int] = defaultdict(int)
        self._adapters: dict[str, Counter[str]] = {}  # replica -> adapter -> requests in flight
        self.on_adapter_request: AdapterRequest | None = None

    @classmethod
    def build(cls, specs: Mapping[str, RouterSpec], *, stats: StatsStore,
              rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> Routing:
        return cls({m: Router(s, rng=rng) for m, s in specs.items()}, stats=stats, clock=clock)

    def acquire(self, replica_id: str, adapter: str | None = None) -> None:
        """A request of this gateway is now on the replica; ``adapter``: its LoRA adapter
        (None: the base model), given back with the same ``release``."""
        self._in_flight[replica_id] += 1
        if adapter is not None:
            self._adapters.setdefault(replica_id, Counter())[adapter] += 1

    def release(self, replica_id: str, adapter: str | None = None) -> None:
        """That request is done (answered, failed or abandoned)."""
        left = self._in_flight[replica_id] - 1
        if left > 0:
            self._in_flight[replica_id] = left
        else:
            self._in_flight.pop(replica_id, None)
        counts = self._adapters.get(replica_id)
        if adapter is not None and counts is not None:
            counts[adapter] -= 1
            if counts[adapter] <= 0:
                del counts[adapter]
            if not counts or left <= 0:
                del self._adapters[replica_id]

    def adapters_in_flight(self, replica_id: str) -> frozenset[str]:
        """The adapters of this gateway's requests on the replica now."""
        counts = self._adapters.get(replica_id)
        return frozenset(counts) if counts else frozenset()

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
                        healthy=self.stats.healthy(e.replica_id, now), adapters_in_flight=self.adapters_in_flight(e.replica_id))
            for e in endpoints if e.replica_id not in exclude
        ]

    def choose(self, endpoints: Sequence[Endpoint], req: RequestInfo, exclude: frozenset[str] = frozenset(),
               timings: Timings | None = None) -> Endpoint:
        """Raises NoReplica, or filters.QueueFull."""
        view = self._routers[req.model].pick(self.views(endpoints, exclude), req, timings)
        if view is None:
            raise NoReplica(req.model)
        if req.adapter is not None and self.on_adapter_request is not None:
            self.on_adapter_request(req.model, req.adapter, adapter_found(view, req.adapter))
        return view.endpoint

    def adapters_of(self, replica_id: str) -> frozenset[str]:
        """The LoRA adapters the replica's last stats say it holds (empty when none are known)."""
        s = self.stats.stats(replica_id, self._clock())
        return s.adapters if s is not None else frozenset()

    def failed(self, replica_id: str) -> None:
        """A request could not reach the replica or lost it: out until it scrapes healthy."""
        self.stats.failed(replica_id, self._clock())
