"""Which local Redis `owc serve` starts on one machine for its gateway processes when the
config names none: the one their fair-queue counts, Batch API records, shared engine-stats
scrapes and tenants' limits, quotas and usage live in (`LocalCluster` starts it; a configured
`gateway.store` serves all four); and where it keeps its rollouts' state."""

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


def needs_tenancy_store(cfg: OwcConfig) -> bool:
    """Tenants with limits or quotas and no Redis configured for them: without one each gateway
    process counts alone (owc serve's two grant twice every limit) and quotas restart at zero
    with the cluster, so the local store carries them too (it becomes gateway.store)."""
    from cluster.tenancy.model import Limits
    from cluster.tenancy.service import limits_of

    gw = cfg.gateway
    return gw.store is None and gw.fair_sharing.store_url is None and any(
        limits_of(t) != Limits() or t.batch_daily_tokens for t in gw.tenants.values())


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


def with_local_store(cfg: OwcConfig, url: str) -> OwcConfig:
    """The config the gateway processes get once the local store runs at ``url``: their
    fair-queue counts (and through them batch records and stats scrapes) there, and the
    tenants' limits too when they have any (``needs_tenancy_store``: it becomes gateway.store)."""
    from cluster.config.gateway import StoreConfig

    update: dict = {"fair_sharing": cfg.gateway.fair_sharing.model_copy(update={"store_url": url})}
    if needs_tenancy_store(cfg):
        update["store"] = StoreConfig(url=url)
    return cfg.model_copy(update={"gateway": cfg.gateway.model_copy(update=update)})


def per_process_limits(cfg: OwcConfig, why: Exception, warn: Callable[[str], None]) -> None:
    """Tells ``warn`` what a cluster without its local store loses on tenants' limits, if anything."""
    if needs_tenancy_store(cfg):
        n = cfg.gateway.replicas.max
        warn(f"{why}: the tenants' limits are counted by each gateway process alone"
             + (f" (its {n} processes grant up to {n}x each limit)" if n > 1 else "")
             + " and their quotas restart at zero with the cluster")
