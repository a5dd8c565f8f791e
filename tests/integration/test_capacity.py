"""The capacity controller on the session cluster with a real Prometheus (`owc monitor`,
1 s scrapes): load makes it add a replica of tiny-llama, quiet makes it remove one, and
the replica being removed drains — long streams running on it finish with every token.
Then the simulator, fed the same load and an engine profile measured in the same run,
predicts the same scaling within a stated tolerance."""

from __future__ import annotations

import dataclasses
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry
from ray import serve

from cluster.capacity.actuators import RayServeActuator
from cluster.capacity.controller import CapacityController
from cluster.capacity.signals import PrometheusSignals
from cluster.capacity.simulator import EngineProfile, OwcPolicy, TraceRequest, simulate
from tests.conftest import REPO, metric, wait_for
from tests.integration.conftest import API_KEY

pytestmark = pytest.mark.integration
MODEL = "tiny-llama"
LONG_TOKENS = 3800
# The simulator's scale-up and scale-down must land within this many seconds of the real ones.
TOLERANCE_S = 15.0


def _registry_endpoints():
    registry = serve.get_deployment_handle("owc-registry", app_name="owc")
    return [e for e in registry.snapshot.remote().result() if e.model == MODEL]


def _long_stream(url: str, i: int) -> dict:
    began = time.monotonic()
    tokens, finish, usage = 0, None, None
    body = {"model": MODEL, "prompt": f"A long story, part {i}:", "max_tokens": LONG_TOKENS, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(timeout=300, headers={"Authorization": f"Bearer {API_KEY}"}) as c, \
            c.stream("POST", f"{url}/v1/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = orjson.loads(line[6:])
            assert "error" not in event, event
            for ch in event.get("choices", []):
                tokens += 1 if ch.get("text") else 0
                finish = ch.get("finish_reason") or finish
            usage = event.get("usage") or usage
    return {"began": began, "ended": time.monotonic(), "finish": finish, "usage": usage, "events": tokens}


def test_controller_adds_a_replica_under_load_and_drains_one_when_quiet(cluster, prometheus):
    actuator = RayServeActuator()
    signals = PrometheusSignals(prometheus)
    ctl = CapacityController(config=cluster.cfg, signals=signals, actuator=actuator, registry=CollectorRegistry())
    assert ctl.models == [MODEL] and actuator.replicas(MODEL) == (1, 1)
    wait_for(lambda: (sig := signals.read(MODEL)) is not None and time.time() - sig.at < 5, 30,
             "Prometheus to have the gateway's series")
    t0 = time.monotonic()
    arrivals: list[TraceRequest] = []
    per_token: list[float] = []
    decisions: list[tuple[float, str, int]] = []
    stop_load = threading.Event()
    client = httpx.Client(base_url=cluster.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120,
                          limits=httpx.Limits(max_connections=64))

    def one(i: int) -> None:
        t = time.monotonic() - t0
        r = client.post("/v1/completions", json={"model": MODEL, "prompt": f"load {i}", "max_tokens": 300,
                                                 "ignore_eos": True})
        assert r.status_code == 200, r.text
        u = r.json()["usage"]
        arrivals.append(TraceRequest(t, u["prompt_tokens"], u["completion_tokens"]))
        per_token.append((time.monotonic() - t0 - t) / u["completion_tokens"])

    def load(pool: ThreadPoolExecutor) -> list:
        """Open loop, 4 requests a second (replayable as a trace): ~2 s each here, so ~8 in flight."""
        sent, i = [], 0
        while not stop_load.is_set():
            sent.append(pool.submit(one, i))
            i += 1
            stop_load.wait(0.25)
        return sent

    def reconcile():
        d = ctl.reconcile_once().get(MODEL)
        if d is not None:
            decisions.append((time.monotonic() - t0, d.reason, d.target))
        return d

    with ThreadPoolExecutor(4) as pool, ThreadPoolExecutor(64) as load_pool:
        loader = pool.submit(load, load_pool)  # ~8 in flight > 4 per replica
        up = wait_for(lambda: (d := reconcile()) is not None and d.reason.startswith("up") and d, 60,
                      "the controller to scale up", period_s=1)
        assert up.target == 2 and up.reason == "up:load"
        t_up = decisions[-1][0]
        wait_for(lambda: actuator.replicas(MODEL) == (2, 2), 180, "the second replica running")
        startup_s = time.monotonic() - t0 - t_up
        wait_for(lambda: metric(cluster.url, "owc_engine_replicas_routable", model=MODEL) == 2, 10,
                 "the gateway routing to both replicas")
        # Three long streams, round-robin over both replicas; then the load stops: what is
        # left (3 in flight) fits one replica, so the controller scales down while they run.
        streams = [pool.submit(_long_stream, cluster.url, i) for i in range(3)]
        time.sleep(1.0)
        stop_load.set()
        for f in loader.result():
            f.result()
        down = wait_for(lambda: (d := reconcile()) is not None and d.reason.startswith("down") and d, 60,
                        "the controller to scale down", period_s=1)
        t_down = time.monotonic()
        assert down.target == 1 and down.reason == "down:low_load"
        # the leaving replica stops taking requests but stays until its streams are done
        wait_for(lambda: any(e.draining for e in _registry_endpoints()), 20, "a replica draining")
        results = [f.result() for f in streams]
        wait_for(lambda: len(_registry_endpoints()) == 1 and actuator.replicas(MODEL) == (1, 1), 60,
                 "the drained replica gone")
    for r in results:
        assert r["finish"] == "length" and r["usage"]["completion_tokens"] == LONG_TOKENS, r
        assert r["ended"] > t_down  # running when the scale-down began …
        assert r["ended"] - r["began"] >= 10  # … and long
    assert ctl.metrics.last_reconcile._value.get() > 0

    # The simulator, given this load under the same policy. Its engine profile is the
    # committed one (one engine alone on the machine) with this run's own service time per
    # token and replica start-up time: here three engines share two cores.
    committed = EngineProfile.load(REPO / "loadtests" / "results" / "engine-profile.json")
    profile = dataclasses.replace(committed, decode_step_base_s=statistics.median(per_token), decode_step_per_seq_s=0.0,
                                  startup_s=startup_s)
    long = [TraceRequest(r["began"] - t0, r["usage"]["prompt_tokens"], LONG_TOKENS) for r in results]
    trace = sorted(arrivals + long, key=lambda r: r.t)
    mc = cluster.cfg.models[MODEL]
    sim = simulate(trace, profile, OwcPolicy(mc.autoscaling, mc.replicas, interval_s=1.0), slo_s=60, initial=1)
    sim_up = next(e["t"] for e in sim.events if e["to"] > e["from"])
    sim_down = next(e["t"] for e in sim.events if e["to"] < e["from"])
    actual_down = t_down - t0
    print(f"scale-up at {t_up:.1f}s (simulated {sim_up:.1f}s), scale-down at {actual_down:.1f}s "
          f"(simulated {sim_down:.1f}s)")
    why = f"simulated {sim.events}, real {decisions}, {len(trace)} requests, {profile}"
    assert sim.peak_replicas == 2, why
    assert abs(sim_up - t_up) <= TOLERANCE_S, why
    assert abs(sim_down - actual_down) <= TOLERANCE_S, why
    client.close()
