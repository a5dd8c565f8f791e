"""The one way owc opens Redis: an asyncio client that answers within ``timeout_s`` or
fails, with no retries of its own (each caller has a declared behaviour when the store is
away: tenancy's on_failure, fair sharing's per-process fallback, the Batch API's 503)."""

from __future__ import annotations

from typing import Any


def fail_fast_client(url: str, *, timeout_s: float, decode_responses: bool = False) -> Any:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                   retry=Retry(NoBackoff(), 0), decode_responses=decode_responses)
