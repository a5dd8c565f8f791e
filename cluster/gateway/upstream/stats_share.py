"""One scrape of every engine per period, shared by the gateway processes through Redis, so
that an engine renders its /metrics once a period however many gateway processes route to it
(each rendering costs its API server CPU: docs/benchmarks.md "Stats scrapes").

One process at a time holds a short lease (``lease_s``: two periods plus a scrape's timeout,
so a round slowed by a timing-out engine does not lose it) and scrapes (the *scraper*); each
round it publishes what it found (per replica: the stats routing reads, or "unreachable"), with
its wall time, in one Lua script that also renews the lease: the round is kept under a key and
PUBLISHed, so the other processes (*followers*) apply it as it lands, as fresh as a scrape of
their own. A follower tries the lease each period (the same script hands it the last round
when it misses a push); once a scraper dies its lease lapses and a follower takes over within
``lease_s`` plus a period, below ``routing_stats.stale_after_s`` at the defaults. A follower
that loads or unloads an adapter asks the scraper to re-read that replica's /v1/models next
round. The store down or slower than ``timeout_s`` (a period, at most 0.25 s): every process
scrapes for itself, as without a store (mode ``local``), and the store is tried again after
``retry_s`` (two periods: a scraper's one slow call leaves its followers' stats a few periods
old, under ``stale_after_s``, and its lease outlives the pause).
Never imports the gateway's other packages; the poller (cluster.gateway.upstream.stats_poller)
calls it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from cluster.routing.types import ReplicaStats
from cluster.tenancy.redis_client import fail_fast_client

log = logging.getLogger(__name__)

MODES = ("local", "scraper", "follower")
FAILED = "failed"  # a round's outcome for a replica that could not be reached (StatsStore.failed)
Outcome = ReplicaStats | str  # a ReplicaStats, or FAILED; a replica without a usable answer is left out

# KEYS: lease, last round, channel, adapter re-reads asked. ARGV: this process, lease ms, round.
# The round is kept and published only while this process holds the lease (renewed here).
# Returns {1, asked replica ids...}, or {0} when the lease is another's.
PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
redis.call('PUBLISH', KEYS[3], ARGV[3])
local asked = redis.call('SMEMBERS', KEYS[4])
redis.call('DEL', KEYS[4])
local out = {1}
for _, r in ipairs(asked) do out[#out + 1] = r end
return out
"""
# KEYS: lease, last round. ARGV: this process, lease ms. {1}: the lease is this process's now;
# {0, last round or false}: another's.
ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if not holder or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1}
end
return {0, redis.call('GET', KEYS[2])}
"""


class StatsShareMetrics:
    """owc_routing_stats_mode{mode} and owc_routing_stats_rounds_total{source} on the gateway's registry."""

    def __init__(self, registry: CollectorRegistry):
        self._mode = Gauge("owc_routing_stats_mode", "1 for the way this gateway process gets engine stats now: "
                           "local (scrapes itself), scraper (scrapes for every process), follower (applies the "
                           "scraper's rounds).", ["mode"], registry=registry)
        self._rounds = Counter("owc_routing_stats_rounds_total", "Rounds of engine stats this gateway process "
                               "applied, by source: scraped (its own scrape) or shared (another process's).",
                               ["source"], registry=registry)
        self.errors = Counter("owc_routing_stats_store_errors_total", "Calls to the store that shares engine "
                              "stats that failed (connection, timeout, error).", registry=registry)
        self.mode("local")

    def mode(self, mode: str) -> None:
        for m in MODES:
            self._mode.labels(m).set(int(m == mode))

    def round(self, source: str) -> None:
        self._rounds.labels(source).inc()


def encode(outcomes: Mapping[str, Outcome]) -> dict:
    out = {}
    for rid, o in outcomes.items():
        if isinstance(o, ReplicaStats):
            o = {f.name: sorted(v) if isinstance(v, frozenset) else v
                 for f in dataclasses.fields(o) for v in [getattr(o, f.name)]}
        out[rid] = o
    return out


def decode(replicas: Mapping[str, object]) -> dict[str, Outcome]:
    return {rid: o if o == FAILED else
            ReplicaStats(**{k: frozenset(v) if isinstance(v, list) else v for k, v in o.items()})
            for rid, o in replicas.items()}


def scope_of(models: Iterable[str]) -> str:
    """The keys' scope: the models served (one deployment's gateways share one scope)."""
    return hashlib.sha256("\0".join(sorted(models)).encode()).hexdigest()[:12]


OnRound = Callable[[dict[str, Outcome], float], None]  # (outcomes, age in seconds)


class RedisStatsShare:
    def __init__(self, url: str, *, scope: str, period_s: float, lease_s: float, timeout_s: float,
                 metrics: StatsShareMetrics, retry_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.url = url
        self.id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"  # this gateway process
        p = "owc:stats:{" + scope + "}"
        self._lease, self._last, self._channel, self._asked = p + ":lease", p + ":round", p + ":push", p + ":asked"
        self._r = fail_fast_client(url, timeout_s=timeout_s, decode_responses=True)
        self._publish = self._r.register_script(PUBLISH)
        self._acquire = self._r.register_script(ACQUIRE)
        self._lease_ms = str(int(lease_s * 1000))
        self.period_s, self._timeout_s, self._retry_s = period_s, timeout_s, retry_s
        self._metrics, self._clock, self._wall = metrics, clock, wall
        self.mode = "local"
        self._down_until = 0.0
        self._seq = 0
        self._applied: tuple[str, int] | None = None
        self._on_round: OnRound | None = None
        self._listener: asyncio.Task | None = None

    def _set_mode(self, mode: str) -> None:
        if mode != self.mode:
            log.info("engine stats: %s -> %s", self.mode, mode)
            self.mode = mode
            self._metrics.mode(mode)

    def _failed(self, e: BaseException) -> None:
        self._metrics.errors.inc()
        if self.mode != "local":
            log.warning("stats store %s failed (%r): each gateway process scrapes the engines itself for now",
                        self.url, e)
        self._set_mode("local")
        self._down_until = self._clock() + self._retry_s

    async def should_scrape(self) -> bool:
        """At a round's start: True when this process scrapes this round (it holds the lease,
        or the store is away); False when a peer scrapes and its round comes to ``on_round``."""
        if self._down_until and self._clock() < self._down_until:
            return True
        self._down_until = 0.0
        if self.mode == "scraper":
            return True  # the lease is renewed with each round published
        try:
            got = await asyncio.wait_for(self._acquire(keys=[self._lease, self._last],
                                                       args=[self.id, self._lease_ms]), self._timeout_s)
        except Exception as e:  # down, stalled, or nonsense: scrape alone
            self._failed(e)
            return True
        if int(got[0]) == 1:
            self._set_mode("scraper")
            return True
        self._set_mode("follower")
        if len(got) > 1 and got[1]:
            self._receive(got[1])  # the last round, in case its push was missed
        return False

    async def publish(self, outcomes: Mapping[str, Outcome]) -> set[str]:
        """The scraper's round to the followers; returns the replicas whose adapters a follower
        asked to re-read. A lease found to be another's makes this process a follower."""
        if self.mode != "scraper":
            return set()
        self._seq += 1
        body = json.dumps({"id": self.id, "n": self._seq, "t": self._wall(), "r": encode(outcomes)},
                          separators=(",", ":"))
        try:
            got = await asyncio.wait_for(self._publish(keys=[self._lease, self._last, self._channel, self._asked],
                                                       args=[self.id, self._lease_ms, body]), self._timeout_s)
        except Exception as e:
            self._failed(e)
            return set()
        if int(got[0]) != 1:
            self._set_mode("follower")
            return set()
        return set(got[1:])

    async def ask_adapters(self, replica_id: str) -> None:
        """A follower changed a replica's adapters: the scraper re-reads its /v1/models next round."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._r.sadd(self._asked, replica_id), self._timeout_s)

    def _receive(self, body: str) -> None:
        if self.mode != "follower" or self._on_round is None:
            return  # a scraper has its own rounds; a process alone scrapes for itself
        try:
            msg = json.loads(body)
            key = (msg["id"], int(msg["n"]))
            if msg["id"] == self.id or key == self._applied:
                return
            outcomes, age = decode(msg["r"]), max(0.0, self._wall() - float(msg["t"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.debug("unreadable stats round: %r", e)
            return
        self._applied = key
        self._on_round(outcomes, age)

    async def _listen(self) -> None:
        """Pushed rounds, as they are published; reconnects after ``retry_s`` when the store goes."""
        while True:
            r = pubsub = None
            try:
                import redis.asyncio as aioredis

                r = aioredis.Redis.from_url(self.url, socket_connect_timeout=self._timeout_s, decode_responses=True)
                pubsub = r.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self._channel)
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self._receive(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the store away: follower rounds stop, the lease lapses, scrape alone
                log.debug("stats push subscription: %r", e)
            finally:
                for c in (pubsub, r):
                    if c is not None:
                        with contextlib.suppress(Exception):
                            await c.aclose()
            await asyncio.sleep(self._retry_s)

    async def start(self, on_round: OnRound) -> None:
        self._on_round = on_round
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self.mode == "scraper":  # hand the lease on at once rather than after it lapses
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._r.eval(
                    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                    1, self._lease, self.id), self._timeout_s)
        await self._r.aclose()


def store_url(gateway) -> str | None:
    """The Redis the gateway processes share: fair_sharing.store_url (the one `owc serve`
    starts), else gateway.store's."""
    store = gateway.store
    shared = store and ((os.environ.get(store.url_env) if store.url_env else None) or store.url)
    return gateway.fair_sharing.store_url or shared


def build_stats_share(config, metrics: StatsShareMetrics) -> RedisStatsShare | None:
    """From the config: None without a store or with routing_stats.share_across_gateways off."""
    rs = config.gateway.routing_stats
    url = store_url(config.gateway)
    if not (rs.share_across_gateways and url):
        return None
    return RedisStatsShare(url, scope=scope_of(config.models), period_s=rs.period_s,
                           lease_s=2 * rs.period_s + rs.timeout_s, timeout_s=min(rs.period_s, 0.25),
                           retry_s=2 * rs.period_s, metrics=metrics)
