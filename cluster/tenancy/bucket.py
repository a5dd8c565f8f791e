"""The one token bucket: a level that refills at ``rate`` per second up to ``cap``. The
in-process tenancy store (requests and tokens per minute) and the gateway's failed-auth
throttle both use it; the Redis store runs the same arithmetic in its Lua script."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    rate: float  # refill, per second
    cap: float
    level: float
    stamp: float  # when ``level`` was last brought up to date (the caller's clock)

    @classmethod
    def full(cls, rate: float, cap: float, now: float) -> TokenBucket:
        return cls(rate, cap, cap, now)

    def refill(self, now: float) -> float:
        """The level at ``now`` (a clock that steps back refills nothing)."""
        self.level = min(self.cap, self.level + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        return self.level

    def wait_s(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` is in the bucket (0 when it is now); refill first."""
        return 0.0 if self.level >= cost else (cost - self.level) / self.rate

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` when it is there and answer 0; else take nothing and answer the
        seconds until it would be there."""
        self.refill(now)
        wait = self.wait_s(cost)
        if wait == 0.0:
            self.level -= cost
        return wait

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.cap - self.level) / self.rate
