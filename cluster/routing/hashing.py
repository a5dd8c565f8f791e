"""Home replicas by rendezvous (highest-random-weight) hashing, with bounded load.

Every gateway replica ranks a key's replicas the same way (the ranking depends only on the
key and the replica ids), so affinity needs no shared state between gateways. Adding or
removing a replica moves only the keys whose top choice it is or was (about 1/n of them).
Bounded load (Mirrokni et al., "Consistent Hashing with Bounded Loads"): a replica already
holding more than ``factor`` times the mean load is passed over for the next in the key's
ranking, so a hot prefix spills over instead of piling onto one replica.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from hashlib import blake2b


def weight(key: bytes, replica_id: str) -> int:
    return int.from_bytes(blake2b(key + b"\x00" + replica_id.encode(), digest_size=8).digest(), "big")


def ranking(key: bytes, replica_ids: Sequence[str]) -> list[int]:
    """Indices of ``replica_ids`` from the key's first choice to its last."""
    return sorted(range(len(replica_ids)), key=lambda i: weight(key, replica_ids[i]), reverse=True)


def load_bound(loads: Sequence[float], factor: float) -> float:
    """The most load a replica may hold counting one more request: ``factor`` times the mean
    load counting the new request, and at least one above that mean (near idle, a bare
    factor would spill the second request of a prefix already)."""
    mean = (sum(loads) + 1) / len(loads)
    return float(max(math.ceil(factor * mean), math.ceil(mean) + 1))


def bounded_home(key: bytes, replica_ids: Sequence[str], loads: Sequence[float], factor: float) -> int:
    """Index of the first replica in the key's ranking whose load is under the bound. One
    always exists: the least loaded replica is at or under the mean."""
    if not replica_ids:
        raise ValueError("no replicas")
    bound = load_bound(loads, factor)
    order = ranking(key, replica_ids)
    for i in order:
        if loads[i] + 1 <= bound:
            return i
    return min(order, key=lambda i: loads[i])
