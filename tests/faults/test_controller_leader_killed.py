"""Fault 5 (full run only): the controller leader SIGKILLed in the middle of a scale-down
window, against the in-test Kubernetes API server (tests/unit/test_capacity_kubernetes.py's
FakeApi: RayService and Lease, through the real `kubernetes` client).

Two controller pods, each its own process running the controller loop every 2 s on the
wall clock with Lease election (a 9 s Lease: 2 x interval + 5 s), patching the RayService.
Both read one load timeline (tests/unit/test_capacity_failover.py's Timeline: now, and as
Prometheus's history over a window) — 20 requests in flight (3 engine replicas, 3 gateway
processes) until ``LOW_AT``, then 3 (1 of each). The window is 30 s. The leader is
SIGKILLed mid-window (no Lease release, no last write); the follower gets the Lease once
it expires, rebuilds the windows from history, and must scale down no earlier than 30 s
after the load went low — not at once (a window it never saw, taken as full), and not a
full window after its takeover (a window restarted).

No HTTP traffic runs here (the fault is in the control plane; the data plane is not in the
picture): the record's ``sent`` etc. are 0 and ``detail`` carries the decisions and
scalings. ``recovery_s``: from the kill until the follower's first round as leader.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtests.fault_load import write
from tests.conftest import REPO, wait_for
from tests.faults.conftest import full_only

pytestmark = [pytest.mark.integration, full_only]

MODEL = "gpt-oss-20b"
GATEWAY = "owc-gateway"
INTERVAL_S = 2.0
WINDOW_S = 30.0
LOW_AT = 10.0  # seconds after the start: the load goes low
KILL_AT = LOW_AT + WINDOW_S / 2  # mid-window
END_AT = LOW_AT + 2 * WINDOW_S + 10
CONFIG = {
    "models": {
        MODEL: {"source": "openai/gpt-oss-20b", "accelerator": {"kind": "gpu"}, "replicas": {"min": 1, "max": 4},
                "autoscaling": {"enabled": True, "target_ongoing_per_replica": 8, "down_utilization": 0.6,
                                "up_cooldown_s": 0, "down_stabilization_s": WINDOW_S, "down_cooldown_s": 15}},
    },
    "gateway": {"host": "0.0.0.0", "api_keys_file": "/etc/owc/keys.yaml", "replicas": {"min": 1, "max": 4},
                "autoscaling": {"target_in_flight_per_replica": 100, "up_cooldown_s": 0,
                                "down_stabilization_s": WINDOW_S, "down_cooldown_s": 15}},
}


def pod(url: str, who: str, t0: float, out: str) -> None:
    """One controller pod's process: the controller loop until killed, every decision and
    scaling a JSON line in ``out``."""
    from prometheus_client import CollectorRegistry

    from cluster.capacity.actuators import KubernetesActuator
    from cluster.capacity.controller import CapacityController
    from cluster.capacity.election import LeaseElector
    from cluster.config.loader import parse_config
    from tests.unit.test_capacity_failover import Timeline
    from tests.unit.test_capacity_kubernetes import NAME, NS, clients

    log = open(out, "a", buffering=1)

    def note(**kw) -> None:
        log.write(json.dumps({"t": round(time.time() - t0, 2), "who": who, **kw}) + "\n")

    class Recording(KubernetesActuator):
        def scale(self, key, target):
            super().scale(key, target)
            note(kind="scale", key=key, target=target)

    def low(t: float) -> bool:
        return t - t0 >= LOW_AT

    timeline = Timeline(time.time, ongoing=lambda t: 3 if low(t) else 20, gateway=lambda t: 50 if low(t) else 250)
    custom, coord = clients(url)
    elector = LeaseElector(api=coord, namespace=NS, name="owc-controller", identity=who, renew_interval_s=INTERVAL_S)
    ctl = CapacityController(config=parse_config(CONFIG), signals=timeline, registry=CollectorRegistry(),
                             interval_s=INTERVAL_S, actuator=Recording(api=custom, namespace=NS, name=NAME),
                             elector=elector)
    while True:
        began = time.monotonic()
        out_ = ctl.reconcile_once()
        leader = ctl.metrics.leader._value.get() == 1
        state = ctl.state.get(MODEL)
        note(kind="round", leader=leader, decisions={k: [d.reason, d.target] for k, d in out_.items()},
             low_since=None if state is None or state.low_since is None else round(state.low_since - t0, 2))
        time.sleep(max(0.0, INTERVAL_S - (time.monotonic() - began)))


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def test_leader_killed_mid_scale_down_window_no_early_scale_down(tmp_path, faults_out):
    from tests.unit.test_capacity_kubernetes import NS, OWC, FakeApi, clients

    api = FakeApi(OWC)
    log = tmp_path / "pods.jsonl"
    t0 = time.time()
    procs: dict[str, subprocess.Popen] = {}
    try:
        for who in ("pod-a", "pod-b"):
            code = f"from tests.faults.test_controller_leader_killed import pod; pod({api.url!r}, {who!r}, {t0!r}, {str(log)!r})"
            procs[who] = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        lease_api = clients(api.url)[1]

        def holder() -> str | None:
            try:
                return lease_api.read_namespaced_lease("owc-controller", NS).spec.holder_identity
            except Exception:
                return None

        wait_for(lambda: [x for x in _lines(log) if x["kind"] == "scale"], 60, "the leader's scale-up")
        leader = holder()
        follower = next(w for w in procs if w != leader)
        wait_for(lambda: time.time() - t0 >= KILL_AT, 60, "mid-window")
        window_seen = [x["low_since"] for x in _lines(log) if x["who"] == leader and x["kind"] == "round"][-1]
        procs[leader].send_signal(signal.SIGKILL)
        procs[leader].wait(10)
        killed = time.time() - t0
        held_after_kill = holder()  # no release: still the dead pod's until it expires
        wait_for(lambda: time.time() - t0 >= END_AT, END_AT + 30, "the end of the run")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(10)
        api.server.shutdown()

    lines = _lines(log)
    scalings = [(x["t"], x["who"], x["key"], x["target"]) for x in lines if x["kind"] == "scale"]
    took_over = next((x["t"] for x in lines if x["who"] == follower and x["kind"] == "round" and x["leader"]), None)
    rebuilt = next((x["low_since"] for x in lines if x["who"] == follower and x["kind"] == "round" and x["leader"]), None)
    downs = [s for s in scalings if s[3] < 3]
    first_down = {k: next((t for t, _, key, _ in downs if key == k), None) for k in (MODEL, GATEWAY)}
    record = {
        "name": "controller_leader_killed", "sent": 0, "succeeded": 0, "failed": 0, "resumed": 0, "lost": 0,
        "recovery_s": None if took_over is None else round(took_over - killed, 1),
        "ttft_p99_before": None, "ttft_p99_during": None, "ttft_p99_after": None,
        "detail": {
            "what": "no HTTP load: decisions of two controller processes, the leader SIGKILLed mid scale-down window",
            "interval_s": INTERVAL_S, "lease_s": 9, "window_s": WINDOW_S, "low_at_s": LOW_AT, "killed_at_s": round(killed, 1),
            "leader": leader, "follower": follower, "lease_holder_after_kill": held_after_kill,
            "window_open_since_s_at_kill": window_seen, "follower_leads_at_s": took_over,
            "follower_rebuilt_low_since_s": rebuilt, "first_scale_down_at_s": first_down,
            "earliest_allowed_s": LOW_AT + WINDOW_S, "scalings": scalings,
        },
    }
    write(record, faults_out)
    print(json.dumps(record))
    assert held_after_kill == leader, record  # killed abruptly: nothing handed over
    assert took_over is not None and took_over >= killed, record
    ups = [s for s in scalings if s[3] == 3]
    assert {(who, key) for _, who, key, _ in ups} == {(leader, MODEL), (leader, GATEWAY)}, record
    assert downs and all(who == follower for _, who, _, _ in downs), record  # the dead pod acted no more
    for t in first_down.values():
        # no early scale-down: the full window since the load went low; and the follower
        # continued the window it rebuilt rather than restarting it at its takeover
        assert t is not None and t >= LOW_AT + WINDOW_S, record
        assert t < took_over + WINDOW_S, record
    # the model's next step waits for the cooldown after the first (15 s)
    model_downs = [t for t, _, key, _ in downs if key == MODEL]
    assert all(b - a >= 15 for a, b in zip(model_downs, model_downs[1:])), record
