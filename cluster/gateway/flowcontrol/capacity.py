"""What a model's replicas can take, as one dispatch decision of the fair queue sees them
(cluster.gateway.flowcontrol.fair_queue): each replica's batch (configured or learned from
its scrapes) against this gateway's requests on it plus the other gateways' (from the
shared view while the model is hot, else from the replica's last scrape)."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.gateway.flowcontrol.shared import Counts
from cluster.routing.types import ReplicaStats


@dataclass(frozen=True)
class Capacity:
    """A model's replicas as one dispatch decision sees them."""

    at_limit: frozenset[str]  # replicas with batch + margin requests on them: no more
    busy: frozenset[str]  # replicas with no free running slot (at or over their batch)
    free: int  # free running slots over the replicas whose batch is known
    total: int  # running slots over the replicas whose batch is known
    own: int  # of those replicas' requests, this gateway's
    others: int  # and the other gateways' (shared view, else as the last scrape showed them)
    unbounded: bool  # some routable replica has no known batch: never hold
    routable: int
    view: Counts | None = None  # the other gateways' counts from the shared store (None: per process)

    @property
    def room(self) -> bool:
        """Somewhere to send a request (True when nothing is routable: routing answers why)."""
        return self.unbounded or self.routable == 0 or len(self.at_limit) < self.routable


def others_on(stats: ReplicaStats, own: int) -> int:
    """The other gateways' requests on a replica: its scraped running + waiting less this
    gateway's own there."""
    return max(0, int(stats.running + stats.waiting) - own)


def learn_capacity(known: int | None, stats: ReplicaStats, *, probe: bool = True) -> int | None:
    """What the replica can run at once, from one scrape: while it has a queue, at least what
    it runs (never less than learned before: a queue behind fewer can be a LoRA batch waiting
    for its adapter's slot, not a smaller batch); when it runs more than what was thought its
    capacity with nothing waiting, that. ``probe`` (the gateway sends a replica no more than
    its capacity: no dispatch margin): running all it was given with nothing waiting, one
    more — never with a margin, which shows a larger batch by itself, where a probe that an
    engine running exactly its batch confirms would stay one slot over it for good."""
    running = int(stats.running)
    if stats.waiting >= 1 and running >= 1:
        return max(running, known or 0)
    if known is not None and stats.waiting < 1 and (running > known or probe and running == known):
        return running + 1 if probe else running
    return known
