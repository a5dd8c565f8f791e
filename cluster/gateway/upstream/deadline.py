"""A request's deadline (``gateway.request_timeout_s``): when it passes, the engine
connection is closed (vLLM aborts a request whose client went away) or, before the engine
answered, the opening is cancelled (the forwarder answers 504)."""

from __future__ import annotations

import asyncio

from cluster.gateway.upstream.engine_client import Response


class Deadline:
    """Ends a request that outlives ``request_timeout_s``: closes its engine connection."""

    def __init__(self, timeout_s: float):
        self.expired = False
        self.resp: Response | None = None
        self.opening: asyncio.Future | None = None
        self._handle = asyncio.get_running_loop().call_later(timeout_s, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self.resp is not None:
            self.resp.close()
        elif self.opening is not None:
            self.opening.cancel()

    def cancel(self) -> None:
        self._handle.cancel()
