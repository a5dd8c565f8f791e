"""A batch line's charge, pending: what a finished line owes (its tokens and usage record) and
where its reservation was made, as one JSON string the batch ledger keeps beside the line's
done-mark until it is settled (cluster.tenancy.service.Tenancy.settle_line, once per line)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import orjson


@dataclass(frozen=True)
class Part:
    """One reservation of the line: under the tenant's quotas or its batch quota."""

    source: str  # the store that reserved it: redis | local
    day: int
    month: int
    daily: bool  # the quota it was held to (the key to charge)
    monthly: bool


@dataclass(frozen=True)
class LineCharge:
    tenant: str
    model: str  # batch:<model>, the usage record's
    tokens: int  # prompt + completion charged
    usage: tuple[int, int, int, int, int]  # requests, prompt, completion, reasoning, errors
    main: Part
    side: Part | None = None  # the tenant's batch_daily_tokens

    def dumps(self) -> str:
        return orjson.dumps(dataclasses.asdict(self)).decode()

    @classmethod
    def loads(cls, raw: str | bytes) -> LineCharge:
        d = orjson.loads(raw)
        return cls(d["tenant"], d["model"], d["tokens"], tuple(d["usage"]), Part(**d["main"]),
                   Part(**d["side"]) if d["side"] else None)
