"""Which local Redis `owc serve` starts on one machine for its gateway processes when the
config names none: the one their fair-queue counts, Batch API records and shared engine-stats
scrapes live in (`LocalCluster` starts it; a configured `gateway.store` serves all three)."""

from __future__ import annotations

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
