"""Fault 4 (full run only): Prometheus down for 60 s (``OWC_FAULT_PROM_DOWN_S`` shortens it
for trial runs) under steady load. The controller holds — no scaling — and exports why
(``owc_controller_hold{reason="no_data"}`` 1); after Prometheus is back it decides on the
load again.

Set-up: one gateway process in front of the fake engine (loadtests/fake_engine.py), a real
Prometheus (the binary the integration tests use) scraping the gateway's metrics port and
the engine every second, and the capacity controller run in-process every second with its
real Prometheus signals (cluster.capacity.signals.PrometheusSignals) against an in-memory
actuator that records every scaling (no Ray: what is under test is the controller's
reading of a Prometheus that goes away, not Serve's scaling). The load: 10 streams in a
closed loop, which the policy sizes at exactly the 2 replicas in force (``hold:steady``):
a controller that read the missing signals as no load would scale down to 1.

Prometheus is SIGKILLed (no clean shutdown) and started again on the same port and data
dir (it replays its WAL). ``stale_after_s`` is 10 s, so samples from before the outage do
not count as the load once it is back. ``recovery_s``: from the restart until the
controller's first decision that is not ``hold:no_data``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from cluster.capacity.controller import CapacityController
from cluster.capacity.signals import PrometheusSignals
from cluster.config.loader import parse_config
from cluster.process import free_port
from loadtests.fault_load import Load, wait_until, write
from tests.conftest import fake_engine_argv, gateway_argv, server
from tests.faults.conftest import full_only
from tests.tools import tool

pytestmark = [pytest.mark.integration, full_only]

MODEL = "fake"
DOWN_S = float(os.environ.get("OWC_FAULT_PROM_DOWN_S", "60"))
CONFIG = {
    "models": {MODEL: {"source": "external", "replicas": {"min": 1, "max": 4}, "autoscaling": {
        "enabled": True, "target_ongoing_per_replica": 8, "up_cooldown_s": 0, "down_cooldown_s": 0,
        "down_stabilization_s": 30, "stale_after_s": 10}}},
    "gateway": {"api_keys_env": None},
}


class Recording:
    """The replica target in memory; every scaling recorded."""

    def __init__(self, n: int):
        self.n, self.scalings = n, []

    def replicas(self, key):
        return self.n, self.n

    def scale(self, key, target):
        self.scalings.append((time.monotonic(), key, self.n, target))
        self.n = target


class Prometheus:
    def __init__(self, tmp: Path, targets: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = tmp / "prom-data"
        self.cfg = tmp / "prometheus.yml"
        self.cfg.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [t]}]} for job, t in targets.items()],
        }))
        self.log = tmp / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [tool("prometheus"), f"--config.file={self.cfg}", f"--storage.tsdb.path={self.data}",
                 f"--web.listen-address=127.0.0.1:{self.port}"], stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def all_up(self) -> bool:
        try:
            active = httpx.get(self.url + "/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return bool(active) and all(t["health"] == "up" for t in active)


def test_prometheus_down_the_controller_holds_and_resumes(tmp_path, faults_out):
    with server(fake_engine_argv(MODEL, ttft_ms=5, itl_ms=20, max_num_seqs=64)) as engine, \
            server(gateway_argv(f"{MODEL}={engine.url}")) as gw:
        prom = Prometheus(tmp_path, {"owc-gateway": gw.metrics_url.removeprefix("http://"),
                                     "owc-engine": engine.url.removeprefix("http://")})
        prom.start()
        try:
            record, decisions, act, ctl, marks = asyncio.run(_scenario(gw.url, prom))
        finally:
            prom.stop()
    write(record, faults_out)
    print(record)
    killed, restarted, recovered = marks
    during = [d for d in decisions if killed + 0.5 <= d[0] < restarted]  # a round already reading at the kill
    after = [d for d in decisions if d[0] >= recovered]
    assert act.scalings == [], (act.scalings, decisions)  # held throughout: no scaling at all
    assert during and all(r == "hold:no_data" and held == 1 for _, r, _, held in during), during
    assert record["recovery_s"] is not None and after and all(r != "hold:no_data" and held == 0
                                                                  for _, r, _, held in after), after
    assert ctl.metrics.errors.labels(MODEL)._value.get() == 0  # an unreachable Prometheus is no error: a hold
    assert record["lost"] == 0 and record["failed"] == 0, record


async def _scenario(url: str, prom: Prometheus):
    signals = PrometheusSignals(prom.url, client=httpx.Client(timeout=2))
    act = Recording(2)
    ctl = CapacityController(config=parse_config(CONFIG), signals=signals, actuator=act, registry=CollectorRegistry(),
                             interval_s=1.0)
    decisions: list[tuple[float, str, int, float]] = []  # (monotonic, reason, target, hold{no_data} after it)
    stop_ctl = threading.Event()

    def controller() -> None:
        while not stop_ctl.is_set():
            d = ctl.reconcile_once().get(MODEL)
            if d is not None:
                decisions.append((time.monotonic(), d.reason, d.target,
                                  ctl.metrics.hold.labels(MODEL, "no_data")._value.get()))
            stop_ctl.wait(1.0)

    load = Load([url], model=MODEL)
    body = load.body(50, True, ignore_eos=True)  # ~1 s each: 10 in flight, 2 replicas' worth at 8
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=60) as client:
        loops = [asyncio.create_task(load.loop(client, stop, lambda: body)) for _ in range(10)]
        thread = threading.Thread(target=controller, daemon=True)
        try:
            await wait_until(prom.all_up, 30, lambda: "Prometheus scraping the gateway and the engine")
            thread.start()
            await wait_until(lambda: decisions and decisions[-1][1] == "hold:steady", 60,
                             lambda: f"steady decisions before the outage: {decisions[-5:]}")
            await asyncio.sleep(5)
            prom.kill()
            killed = time.monotonic()
            await asyncio.sleep(DOWN_S)
            prom.start()
            restarted = time.monotonic()
            await wait_until(lambda: any(t > restarted and r != "hold:no_data" for t, r, _, _ in decisions), 60,
                             lambda: f"a decision on the load after the restart: {decisions[-5:]}")
            recovered = next(t for t, r, _, _ in decisions if t > restarted and r != "hold:no_data")
            await asyncio.sleep(10)
        finally:
            stop.set()
            stop_ctl.set()
            await asyncio.gather(*loops)
            if thread.is_alive():
                thread.join()
    reasons: dict[str, dict[str, int]] = {}
    for t, r, _, _ in decisions:
        phase = "before" if t < killed else "during" if t < restarted else "restarting" if t < recovered else "after"
        reasons.setdefault(phase, {}).setdefault(r, 0)
        reasons[phase][r] += 1
    record = load.record("prometheus_down", fault_at=killed, recovered_at=recovered, down_s=DOWN_S,
                         decisions=reasons, scalings=len(act.scalings), replicas=act.n,
                         controller_errors=ctl.metrics.errors.labels(MODEL)._value.get(),
                         controller="in-process, every 1 s, PrometheusSignals against a recording actuator")
    record["recovery_s"] = round(recovered - restarted, 1)  # from the restart, not from the kill
    record["detail"]["outage_to_recovery_s"] = round(recovered - killed, 1)
    return record, decisions, act, ctl, (killed, restarted, recovered)
