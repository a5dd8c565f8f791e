"""The routing pipeline: filters -> weighted scorers -> picker, one per model, built from
the model's `routing:` config by plugin name. Each plugin's time is appended to a list the
caller passes (``timings``), which the gateway records as a histogram once the request is
done: nothing but the decision runs inside the decision."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from cluster.config.schema import RoutingConfig
from cluster.routing import filters as F
from cluster.routing import pickers as P
from cluster.routing import scorers as S
from cluster.routing.endpoints import Endpoint
from cluster.routing.stats import StatsStore
from cluster.routing.types import ReplicaView, RequestInfo

Timings = list[tuple[str, float]]  # (plugin, seconds) in the order they ran


def build_filter(name: str, cfg: RoutingConfig) -> F.Filter:
    if name == "queue_bound":
        return F.queue_bound(cfg.max_queue_per_replica) if cfg.max_queue_per_replica else (lambda v, r: list(v))
    return {"healthy": F.healthy, "not_draining": F.not_draining, "adapter_loaded": F.adapter_loaded}[name]


def build_scorer(name: str, cfg: RoutingConfig) -> S.Scorer:
    if name == "prefix_affinity":
        return S.prefix_affinity(cfg.bounded_load)
    return {"least_load": S.least_load, "kv_cache": S.kv_cache, "session_affinity": S.session_affinity,
            "lora_affinity": S.lora_affinity}[name]


def build_picker(name: str, rng: random.Random) -> P.Picker:
    return {"max_score": P.MaxScore, "round_robin": P.RoundRobin}[name]() if name in ("max_score", "round_robin") \
        else {"p2c": P.PowerOfTwo, "random": P.Random}[name](rng)


class Router:
    def __init__(self, cfg: RoutingConfig, *, rng: random.Random | None = None):
        filters, scorers, picker = cfg.plugins()
        self.policy = cfg.label
        self.max_retries = cfg.max_retries
        self.uses_prefix = scorers.get("prefix_affinity", 0) > 0  # the prompt prefix key is needed
        self._filters = [(f"filter:{n}", build_filter(n, cfg)) for n in filters]
        self._scorers = [(f"scorer:{n}", build_scorer(n, cfg), w) for n, w in scorers.items() if w > 0]
        self._picker_name = f"picker:{picker}"
        self._picker = build_picker(picker, rng or random.Random())

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
    """Every model's router, the shared stats store and this gateway's in-flight counts."""

    def __init__(
        self, routers: Mapping[str, Router], *, stats: StatsStore, clock: Callable[[], float] = time.monotonic
    ):
        self._routers = dict(routers)
        self.stats = stats
        self._clock = clock
        self.in_flight: dict[str, int] = defaultdict(int)

    @classmethod
    def from_config(cls, models: Mapping[str, RoutingConfig], *, stats: StatsStore,
                    rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> Routing:
        return cls({m: Router(r, rng=rng) for m, r in models.items()}, stats=stats, clock=clock)

    def policy(self, model: str) -> str:
        return self._routers[model].policy

    def plugins(self) -> list[str]:
        return sorted({p for r in self._routers.values() for p in r.plugins})

    def max_retries(self, model: str) -> int:
        return self._routers[model].max_retries

    def uses_prefix(self, model: str) -> bool:
        return self._routers[model].uses_prefix

    def views(self, endpoints: Sequence[Endpoint], exclude: frozenset[str] = frozenset()) -> list[ReplicaView]:
        now = self._clock()
        return [
            ReplicaView(endpoint=e, in_flight=self.in_flight[e.replica_id], stats=self.stats.stats(e.replica_id, now),
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

    def failed(self, replica_id: str) -> None:
        """A request could not reach the replica or lost it: out until it scrapes healthy."""
        self.stats.failed(replica_id, self._clock())
