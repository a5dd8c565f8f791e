"""Which version of a model answers a request during a rollout (pure; docs/rollouts.md).

The version is picked before the replica: ``candidate`` with the candidate's current weight
(% of the model's traffic), else ``stable``. A session (x-session-id, else the body's
`user`) lands at a fixed point in [0, 100) by its hash, so every gateway process picks the
same version for it without shared state, and as the weight grows a session already on the
candidate stays there (its point stays below the weight). Requests with neither are split
per request by a uniform draw."""

from __future__ import annotations

from collections.abc import Callable
from hashlib import blake2b

STABLE, CANDIDATE = "stable", "candidate"
VERSIONS = (STABLE, CANDIDATE)
# During an adapter's rollout, the model's requests that do not name that adapter: labelled
# apart, so that the analysis's stable and candidate series hold the adapter's requests only.
OTHER = "other"


def session_point(key: str) -> float:
    """A session's fixed point in [0, 100)."""
    h = int.from_bytes(blake2b(key.encode(), digest_size=8, person=b"owc-ver").digest(), "big")
    return (h % 1_000_000) / 10_000


def pick_version(weight: float, session: str | None, draw: Callable[[], float]) -> str:
    """``weight``: the candidate's %; ``session``: the sticky key (None: split per request);
    ``draw``: a uniform number in [0, 1) (injected: tests pass their own)."""
    if weight <= 0:
        return STABLE
    if weight >= 100:
        return CANDIDATE
    point = session_point(session) if session is not None else draw() * 100
    return CANDIDATE if point < weight else STABLE
