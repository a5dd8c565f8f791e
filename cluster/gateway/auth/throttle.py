"""Failed authentications, limited per client address: an address that keeps presenting
bad credentials gets 429 with Retry-After for its failures instead of a fresh 401 each
time. A valid credential is never refused, whatever its address did: behind an enterprise
API gateway every client shares one address, and one tenant's typo must not lock out the
rest. The address is the real client's: behind `gateway.trusted_proxies`, the right-most
X-Forwarded-For entry that is not itself a trusted proxy."""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

from cluster.tenancy.bucket import TokenBucket

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def is_trusted(addr: str | None, trusted: Sequence[Network]) -> bool:
    ip = _ip(addr) if addr else None
    return ip is not None and any(ip in net for net in trusted)


def client_address(headers: Mapping[bytes, bytes], peer: str | None, trusted: Sequence[Network]) -> str | None:
    """The address a request comes from: the TCP peer, unless the peer is a trusted proxy;
    then X-Forwarded-For read from the right, skipping trusted proxies (entries further
    left were written by the client itself and prove nothing)."""
    if not is_trusted(peer, trusted):
        return peer
    forwarded = headers.get(b"x-forwarded-for")
    if not forwarded:
        return peer
    hops = [h.strip() for h in forwarded.decode("latin-1").split(",")]
    for hop in reversed(hops):
        if _ip(hop) is None:
            return peer  # a malformed chain: trust none of it
        if not is_trusted(hop, trusted):
            return hop
    return hops[0] or peer


class FailedAuthLimiter:
    """A token bucket of failures per address; the table is bounded (least recently failed
    addresses are forgotten first), so spoofed or many addresses cost bounded memory."""

    def __init__(self, *, per_minute: float, burst: int, max_addresses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._max = max_addresses
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()  # least recently failed first

    def failed(self, address: str | None) -> float:
        """Record one failure of ``address``: 0 while within its budget, else the seconds
        until its next failure would be."""
        key = address or "-"
        now = self._clock()
        bucket = self._buckets.pop(key, None) or TokenBucket.full(self._rate, self._burst, now)
        wait = bucket.take(now)
        self._buckets[key] = bucket
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))
