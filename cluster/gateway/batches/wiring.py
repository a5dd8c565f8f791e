"""The Batch API as the gateway app wires it: the service over the shared Redis (batch.store_url,
else gateway.store's, else the fair-sharing store `owc serve` starts) or in process, the
periodic sweep of expired files and overdue batches, and the batch runner (batch.run) whose
lines go through this process's own admission (cluster.gateway.batches.execute) and whose
leases live in the same store; its owc_batch_* metrics. Started and stopped with the app."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cluster.batch.ledger import LineLedger, MemoryLedger
from cluster.batch.runner import BatchRunner, RunnerHooks
from cluster.batch.service import BatchService, build_service
from cluster.batch.states import STATUSES
from cluster.config.schema import OwcConfig
from cluster.gateway.batches.execute import line_executor
from cluster.periodic import Periodic

log = logging.getLogger(__name__)


def store_url(config: OwcConfig) -> str | None:
    store = config.gateway.store
    shared = store and ((os.environ.get(store.url_env) if store.url_env else None) or store.url)
    return config.batch.store_url or shared or config.gateway.fair_sharing.store_url


class Backlog(Collector):
    """owc_batch_batches{status} and owc_batch_lines_pending as this process's runner last saw them."""

    def __init__(self, runner: BatchRunner):
        self._runner = runner

    def collect(self):
        g = GaugeMetricFamily("owc_batch_batches", "Batches with work left (not yet closed), by status, as this "
                              "gateway process's batch runner last saw them (every process sees all: take max).",
                              labels=["status"])
        for s in STATUSES:
            g.add_metric([s], self._runner.backlog.get(s, 0))
        yield g
        yield GaugeMetricFamily("owc_batch_lines_pending", "Lines of open batches not done yet, as this process's "
                                "batch runner last saw them (every process sees all: take max).",
                                value=self._runner.pending)


def runner_hooks(registry: CollectorRegistry) -> tuple[RunnerHooks, Callable[[str, int], None]]:
    lines = Counter("owc_batch_lines", "Batch lines this gateway process finished, by tenant and outcome (ok: the "
                    "output file, error: the error file, duplicate: a line another process had finished already).",
                    ["tenant", "outcome"], registry=registry)
    closed = Counter("owc_batch_closed", "Batches this gateway process closed, by final status.", ["status"],
                     registry=registry)
    tokens = Counter("owc_batch_tokens", "Tokens (prompt + completion) of answered batch lines, by tenant.",
                     ["tenant"], registry=registry)
    return (RunnerHooks(line=lambda t, o: lines.labels(t, o).inc(), closed=lambda s: closed.labels(s).inc()),
            lambda t, n: tokens.labels(t).inc(n))


class Batches:
    def __init__(self, service: BatchService, *, sweep_period_s: float, runner: BatchRunner | None = None,
                 poll_period_s: float = 1.0):
        self.service = service
        self.runner = runner
        self._sweep = Periodic(service.sweep, period_s=sweep_period_s, what="batch sweep", log=log)
        self._run = None if runner is None else Periodic(runner.tick, period_s=poll_period_s, what="batch runner",
                                                          log=log, traceback=True)

    async def start(self) -> None:
        self._sweep.start()
        if self._run is not None:
            self._run.start()

    async def stop(self) -> None:
        if self._run is not None:
            await self._run.stop()
            await self.runner.stop()
            await self.runner.ledger.close()
        await self._sweep.stop()
        await self.service.close()


def build_ledger(config: OwcConfig) -> LineLedger:
    url = store_url(config)
    if url is None:
        return MemoryLedger()
    from cluster.batch.redis_ledger import RedisLedger

    return RedisLedger(url, timeout_s=config.batch.store_timeout_s)


def build_batches(config: OwcConfig, *, admission: Callable[..., Awaitable[None]] | None = None,
                  registry: CollectorRegistry | None = None) -> Batches | None:
    """None when the Batch API is off (its routes then answer 404). The runner runs when
    batch.run is on and ``admission`` is given (the lines' way to the engines)."""
    cfg = config.batch
    if not cfg.enabled:
        return None
    service = build_service(cfg, store_url=store_url(config))
    runner = None
    if cfg.run and admission is not None:
        hooks, on_tokens = runner_hooks(registry) if registry is not None else (RunnerHooks(), None)
        runner = BatchRunner(service, build_ledger(config), line_executor(admission, on_tokens=on_tokens), hooks=hooks,
                             charges=getattr(admission, "tenancy", None))  # each line charged once (tenancy)
        if registry is not None:
            registry.register(Backlog(runner))
    return Batches(service, sweep_period_s=cfg.sweep_period_s, runner=runner, poll_period_s=cfg.poll_period_s)
