"""Feeds routing with engine stats off the request path: every ``period_s`` every engine
replica's own /metrics (vLLM's gauges) is scraped and, less often, its /v1/models (loaded LoRA
adapters). A replica that cannot be reached is marked unhealthy; the next good scrape puts it
back. One whose scrape times out is slow, not gone: its stats go stale. One that answers
without usable stats stays routable, its stats go stale. Requests never wait on this loop;
stale stats make routing load-blind (cluster.routing.stats).

With a shared store (``share``: cluster.gateway.upstream.stats_share) one gateway process
scrapes for all of them and the others apply its rounds exactly as a scrape of their own, so
an engine's scrape load does not grow with the number of gateway processes; without one, or
while the store is away, each process scrapes for itself."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping

import orjson

from cluster.discovery.endpoints import Endpoint
from cluster.gateway.upstream.scrape_fetch import EngineFetch, Fetch, Unreachable
from cluster.gateway.upstream.stats_share import FAILED, Outcome, RedisStatsShare, StatsShareMetrics
from cluster.periodic import Periodic
from cluster.routing.stats import RUNNING, WANTED_FAMILIES, StatsStore, lora_adapters, parse_vllm_metrics
from cluster.routing.types import ReplicaStats

log = logging.getLogger(__name__)

ADAPTERS_EVERY = 8  # rounds between /v1/models reads
HOLD_ROUNDS = ADAPTERS_EVERY + 4  # a follower's own adapter change outlives shared rounds that predate it
# Only the families routing reads: vLLM's /metrics/ (its prometheus_client mount; the bare
# /metrics route ignores the filter) renders ~0.5 kB of them instead of ~50 kB of every
# family, ~0.3 ms of the engine's CPU per scrape instead of ~4.7 (issue 34). An engine that
# answers it without the gauges (or refuses it: 404, an older guard's 401) is read through the
# plain /metrics from then on; a 5xx is a failing engine, asked the same again next round.
FILTERED_METRICS = "/metrics/?" + urllib.parse.urlencode([("name[]", n) for n in sorted(WANTED_FAMILIES)])
_RUNNING = RUNNING.encode()


class StatsPoller:
    on_scrape: Callable[[str], None] | None = None  # a replica's stats just landed (cluster.gateway.flowcontrol.fair_queue)

    def __init__(
        self, *, endpoints: Callable[[], Iterable[Endpoint]], store: StatsStore, period_s: float, timeout_s: float,
        fetch: Fetch | None = None, clock: Callable[[], float] = time.monotonic,
        engine_key: str | None = None, share: RedisStatsShare | None = None,
        metrics: StatsShareMetrics | None = None,
    ):
        self._endpoints = endpoints
        self._store = store
        # ``fetch``: how an engine is read (cluster.gateway.upstream.scrape_fetch); tests give their own.
        self._fetch = fetch or EngineFetch(timeout_s=timeout_s, engine_key=engine_key)
        self._clock = clock
        self._period_s = period_s
        self._share = share
        self._metrics = metrics
        self._adapters: dict[str, frozenset[str]] = {}
        self._reread: set[str] = set()  # replicas whose /v1/models a follower asked to re-read
        self._changed: dict[tuple[str, str], tuple[bool, float]] = {}  # (replica, adapter) -> (loaded, until)
        self._known: set[str] = set()
        self._plain: set[str] = set()  # replicas that do not filter their metrics (FILTERED_METRICS)
        self._asks: set[asyncio.Task] = set()
        self._round = 0
        self._scraped_last = False
        # Never let the loop die: routing turns load-blind instead.
        self._loop = Periodic(self.poll_once, period_s=period_s, what="stats poll", log=log, fixed_rate=True,
                              traceback=True, clock=clock)

    async def scrape(self, ep: Endpoint, with_adapters: bool) -> Outcome | None:
        """One replica's outcome: its stats, FAILED (unreachable), or None (no usable answer)."""
        try:
            body = await self._metrics_text(ep)
            if body is None:
                return None
            if with_adapters or ep.replica_id not in self._adapters:
                status, models = await self._fetch.get(ep.url, "/v1/models")
                self._adapters[ep.replica_id] = lora_adapters(orjson.loads(models)) if status == 200 else frozenset()
            return parse_vllm_metrics(body, self._adapters.get(ep.replica_id, frozenset()))
        except TimeoutError as e:
            # Slow, not gone (a loaded engine, or this process's own loop): its stats age out
            # (stale after routing_stats.stale_after_s) instead of taking it out of routing.
            log.debug("stats scrape of %s timed out: %s", ep.url, e)
        except Unreachable as e:
            log.debug("stats scrape of %s failed: %s", ep.url, e)
            return FAILED
        except (ValueError, AttributeError) as e:
            log.debug("no stats from %s: %s", ep.url, e)
        return None

    async def _metrics_text(self, ep: Endpoint) -> bytes | None:
        """The replica's routing gauges (FILTERED_METRICS, else its whole /metrics); None: no answer."""
        if ep.replica_id not in self._plain:
            status, body = await self._fetch.get(ep.url, FILTERED_METRICS)
            if 200 <= status < 300 and _RUNNING in body:
                return body
            if status >= 500:  # a failing engine, not a missing filter: no stats this round
                log.debug("no stats from %s: HTTP %s", ep.url, status)
                return None
            self._plain.add(ep.replica_id)
            log.info("%s does not filter its metrics (HTTP %s): reading its whole /metrics", ep.url, status)
        status, body = await self._fetch.get(ep.url, "/metrics")
        if not 200 <= status < 300:
            log.debug("no stats from %s: HTTP %s", ep.url, status)
            return None
        return body

    def apply(self, outcomes: Mapping[str, Outcome], age_s: float = 0.0, *, source: str | None = "shared") -> None:
        """Outcomes into the store (replicas this process knows only), as taken ``age_s`` ago;
        ``source`` names the round in owc_routing_stats_rounds_total (None: a part not counted)."""
        now = self._clock()
        at = now - age_s
        for rid, o in outcomes.items():
            if rid not in self._known:
                continue
            if o == FAILED:
                self._store.failed(rid, at)
                continue
            self._store.update(rid, self._with_own_changes(rid, o, now), at)
            if self.on_scrape is not None:
                self.on_scrape(rid)
        if self._metrics is not None and source is not None:
            self._metrics.round(source)

    def _with_own_changes(self, rid: str, stats: ReplicaStats, now: float) -> ReplicaStats:
        """A shared round read the replica's adapters before this process changed them: keep the change
        until a round agrees or HOLD_ROUNDS have passed."""
        adapters = stats.adapters
        for (r, name), (loaded, until) in list(self._changed.items()):
            if r != rid:
                continue
            if now > until or (name in adapters) == loaded:
                del self._changed[(r, name)]
            else:
                adapters = adapters | {name} if loaded else adapters - {name}
        return stats if adapters == stats.adapters else dataclasses.replace(stats, adapters=adapters)

    def adapter_changed(self, replica_id: str, adapter: str, loaded: bool) -> None:
        """An adapter the gateway loaded or unloaded: in the cached adapter list and the store
        (and, behind a shared scraper, until its rounds say so too)."""
        if replica_id in self._adapters:
            have = self._adapters[replica_id]
            self._adapters[replica_id] = have | {adapter} if loaded else have - {adapter}
        self._store.adapter_changed(replica_id, adapter, loaded)
        if self._share is not None and self._share.mode == "follower":
            self._changed[(replica_id, adapter)] = (loaded, self._clock() + HOLD_ROUNDS * self._period_s)
            task = asyncio.get_running_loop().create_task(self._share.ask_adapters(replica_id))
            self._asks.add(task)
            task.add_done_callback(self._asks.discard)

    async def poll_once(self) -> None:
        eps = {e.replica_id: e for e in self._endpoints()}
        self._known = set(eps)
        self._store.forget(eps)
        for rid in [r for r in self._adapters if r not in eps]:
            del self._adapters[rid]
        self._plain &= eps.keys()
        with_adapters = self._round % ADAPTERS_EVERY == 0
        self._round += 1
        if self._share is not None and not await self._share.should_scrape():
            self._scraped_last = False
            return  # a peer scrapes: its rounds arrive through the share (apply)
        if not self._scraped_last:
            self._adapters.clear()  # read afresh: what this process cached while following may be old
        self._scraped_last = True
        reread, self._reread = self._reread, set()
        outcomes: dict[str, Outcome] = {}

        async def one(rid: str, ep: Endpoint) -> None:
            o = await self.scrape(ep, with_adapters or rid in reread)
            if o is not None:
                outcomes[rid] = o
                self.apply({rid: o}, source=None)  # each replica's stats as they land, as before

        tasks = [asyncio.ensure_future(one(rid, e)) for rid, e in eps.items()]
        try:
            # The followers get the round at once, but for replicas slower than half a period
            # (a timing-out engine holds a round up to routing_stats.timeout_s): those follow.
            pending = (await asyncio.wait(tasks, timeout=self._period_s / 2))[1] if tasks else set()
            if self._metrics is not None:
                self._metrics.round("scraped")
            sent = dict(outcomes)
            if self._share is not None:
                self._reread |= await self._share.publish(sent)
            if pending:
                await asyncio.wait(pending)
                late = {rid: o for rid, o in outcomes.items() if rid not in sent}
                if self._share is not None and late:
                    self._reread |= await self._share.publish(late)
        finally:
            for t in tasks:
                t.cancel()

    async def start(self) -> None:
        if self._share is not None:
            await self._share.start(self.apply)
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        if self._share is not None:
            await self._share.close()
        await self._fetch.aclose()
