"""The timings of the discovery chain, in one place, derived from each other.

engine health check (heartbeat) -> registry -> gateway replica poll -> endpoints file ->
gateway process poll. A replica that stops heartbeating drops out after the TTL; a
draining replica waits DRAIN_NOTICE_S before it stops taking requests for granted, which
must cover both polls so that every gateway has seen it draining.
"""

from __future__ import annotations

HEALTH_CHECK_PERIOD_S = 5.0  # Serve calls each engine replica's check_health, which heartbeats
HEARTBEAT_TTL_S = 4 * HEALTH_CHECK_PERIOD_S  # an entry not refreshed within this is dropped
REGISTRY_POLL_S = 0.5  # each gateway replica polls the registry this often
ENDPOINTS_FILE_POLL_S = 0.2  # each gateway process re-reads its endpoints file this often
# A replica marked draining keeps serving this long before it waits for idle: both polls
# plus a margin for a slow event loop.
DRAIN_NOTICE_S = REGISTRY_POLL_S + ENDPOINTS_FILE_POLL_S + 1.3
