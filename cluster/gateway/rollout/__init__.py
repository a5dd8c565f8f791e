"""Rollouts as the gateway sees them: the version a request goes to, and the admin API over
the analysis's state (docs/rollouts.md). The analysis itself is not here (cluster.rollouts)."""
