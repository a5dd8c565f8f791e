"""Which local Redis `owc serve` starts on one machine for its gateway processes when the
config names none: the one their fair-queue counts, Batch API records and shared engine-stats
scrapes live in (`LocalCluster` starts it; a configured `gateway.store` serves all three); and
where it keeps its rollouts' state."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cluster.config.schema import OwcConfig


def needs_fair_share_store(cfg: OwcConfig) -> bool:
    """More than one gateway process sharing fair-queue counts, and no Redis configured for them."""
    fs = cfg.gateway.fair_sharing
    return (fs.enabled and fs.share_across_gateways and fs.store_url is None and cfg.gateway.store is None
            and cfg.gateway.replicas.max > 1)


def needs_stats_store(cfg: OwcConfig) -> bool:
    """More than one gateway process sharing the engines' stats scrapes (one scrape per engine
    for all: cluster.gateway.upstream.stats_share), and no Redis configured for them: the local
    store started for fair sharing carries them (its url is fair_sharing.store_url)."""
    gw = cfg.gateway
    return gw.routing_stats.share_across_gateways and gw.store is None and gw.fair_sharing.store_url is None \
        and gw.replicas.max > 1


def needs_batch_store(cfg: OwcConfig) -> bool:
    """More than one gateway process serving the Batch API, and no Redis for its records and
    leases: the local store started for fair sharing holds them (batch.store_url falls back to
    fair_sharing.store_url), also when fair sharing does not share its counts."""
    b, gw = cfg.batch, cfg.gateway
    return b.enabled and b.store_url is None and gw.store is None and gw.fair_sharing.store_url is None \
        and gw.replicas.max > 1


def rollout_state_dir(cfg: OwcConfig, temp_dir: str, warn: Callable[[str], None]) -> tuple[Path, int | None]:
    """Where `owc serve` keeps its rollouts' state, and the lock it holds on it until it stops:
    beside its other local state (``<batch.store_dir>/rollouts``, as its Redis's ``redis/``), so
    that a restart resumes a rollout where it was and a rolled-back candidate stays rolled back
    (a changed candidate or rollout is a new one: cluster.rollouts.analysis). Another `owc serve`
    holding it, or a directory that cannot be written: this run's own directory, said so."""
    from cluster.tenancy.local_redis import lock_dir

    kept = Path(cfg.batch.store_dir).expanduser() / "rollouts"
    lock = lock_dir(kept)
    if lock is not None:
        return kept, lock
    warn(f"{kept} is in use by another owc serve or cannot be written: this run's rollouts start over at its next "
         "restart")
    return Path(temp_dir) / "rollouts", None


def release(lock: int | None) -> None:
    if lock is not None:
        os.close(lock)
