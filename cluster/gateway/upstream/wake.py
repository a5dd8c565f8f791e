"""A request for a model scaled to zero is held until a replica registers (it counts as in
flight meanwhile, which is what wakes the model through the controller)."""

from __future__ import annotations

import asyncio
import time

from cluster.discovery.endpoints import Endpoint
from cluster.discovery.sources import EndpointSource
from cluster.gateway.context import ClientGone, Receive, wait_disconnect
from cluster.gateway.errors import RETRY_STARTING, OpenAIError


def taking_requests(endpoints: list[Endpoint]) -> bool:
    """Some replica is registered and not draining (a model at zero has none)."""
    return any(not e.draining for e in endpoints)


async def wait_for_replica(source: EndpointSource, model: str, timeout_s: float, receive: Receive) -> list[Endpoint]:
    """The model's endpoints once one is routable; a client that leaves meanwhile stops
    the wait (it no longer counts in flight, so it no longer keeps the model awake)."""
    deadline = time.monotonic() + timeout_s
    gone = asyncio.ensure_future(wait_disconnect(receive))
    try:
        while time.monotonic() < deadline:
            await asyncio.wait({gone}, timeout=0.1)
            if gone.done():
                raise ClientGone()
            endpoints = source.endpoints(model)
            if taking_requests(endpoints):
                return endpoints
    finally:
        gone.cancel()
    raise OpenAIError(503, f"model {model} is scaled to zero and no replica started within {timeout_s:g}s",
                      code="no_healthy_replica", headers=RETRY_STARTING)
