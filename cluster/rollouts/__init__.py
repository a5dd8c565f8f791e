"""Rollouts run by `owc serve` in its own process (docs/rollouts.md): the analysis of
cluster.capacity.rollout fed by the gateway processes' own metrics."""
