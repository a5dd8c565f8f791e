"""Controller failover without stale decisions, against the in-test Kubernetes API server
(tests/unit/test_capacity_kubernetes.py): two controller pods, one Lease, one RayService,
one load timeline that both read (now, and as Prometheus's history), and a shared clock.

- The Lease outlives an overrunning round (duration >= 2 x interval + 5 s), and a long
  round renews it between targets; a round that overruns it anyway stops acting.
- Leadership moved mid scale-down window: the new leader rebuilds the window from history
  (it scales down when an uninterrupted leader would have, not earlier, and not a full
  window later), takes the cooldowns from the Lease, and a pod that regains the Lease never
  acts on the window it remembered from its earlier lead — no premature scale-down, no
  flapping."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import pytest
import yaml
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from cluster.capacity.actuators import KubernetesActuator
from cluster.capacity.controller import EVENTS_ANNOTATION, CapacityController
from cluster.capacity.election import LeaseElector, check_lease_timing, lease_duration_for
from cluster.capacity.gateway_policy import GATEWAY, GatewaySignals
from cluster.capacity.policy import Signals
from cluster.config.loader import parse_config
from tests.unit.test_capacity_kubernetes import NAME, NS, OWC, FakeApi, clients

INTERVAL = 15.0
EPOCH = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
MODEL = "gpt-oss-20b"
CONFIG = {
    "models": {
        MODEL: {"source": "openai/gpt-oss-20b", "accelerator": {"kind": "gpu"}, "replicas": {"min": 1, "max": 4},
                "autoscaling": {"enabled": True, "target_ongoing_per_replica": 8, "down_utilization": 0.6,
                                "up_cooldown_s": 0, "down_stabilization_s": 120, "down_cooldown_s": 60}},
    },
    "gateway": {"host": "0.0.0.0", "api_keys_file": "/etc/owc/keys.yaml", "replicas": {"min": 1, "max": 4},
                "autoscaling": {"target_in_flight_per_replica": 100, "up_cooldown_s": 0,
                                "down_stabilization_s": 120, "down_cooldown_s": 60}},
}


@pytest.mark.parametrize("duration, interval, ok", [
    (35, 15, True), (34, 15, False), (15, 15, False), (15, 5, True), (14, 5, False), (300, 15, True),
])
def test_lease_duration_must_outlast_two_intervals_and_a_margin(duration, interval, ok):
    assert lease_duration_for(15) == 35 and lease_duration_for(5) == 15 and lease_duration_for(2.2) == 10
    if ok:
        check_lease_timing(duration, interval)
    else:
        with pytest.raises(ValueError, match="at least 2 x the reconcile interval"):
            check_lease_timing(duration, interval)
        with pytest.raises(ValueError):
            LeaseElector(api=None, namespace=NS, name="l", identity="a", duration_s=duration,
                         renew_interval_s=interval)


class Timeline:
    """What Prometheus saw: the engine's in-flight count and the gateways' (in flight less
    fair-queue held) as functions of time; ``read`` is now, ``history`` a query_range."""

    def __init__(self, clock, ongoing, gateway):
        self.clock, self.ongoing, self.gateway = clock, ongoing, gateway
        self.history_calls = []

    def _at(self, key, t):
        if key == GATEWAY:
            return GatewaySignals(at=t - 1, in_flight=self.gateway(t))
        return Signals(at=t - 1, ongoing=self.ongoing(t), queue=0)

    def read(self, key):
        return self._at(key, self.clock())

    def history(self, key, start, end, step):
        self.history_calls.append((key, start, end, step))
        n = int(round((end - start) / step))
        return [(start + i * step, self._at(key, start + i * step)) for i in range(n + 1)]


class Recording(KubernetesActuator):
    def __init__(self, log, who, clock, **kw):
        super().__init__(**kw)
        self.log, self.who, self.clock = log, who, clock

    def scale(self, model, target):
        super().scale(model, target)
        self.log.append((self.clock(), self.who, model, target))


def pods(api, timeline, now, log):
    out = {}
    for who in ("pod-a", "pod-b"):
        custom, coord = clients(api.url)
        out[who] = CapacityController(
            config=parse_config(CONFIG), signals=timeline, registry=CollectorRegistry(), clock=lambda: now[0],
            interval_s=INTERVAL,
            actuator=Recording(log, who, lambda: now[0], api=custom, namespace=NS, name=NAME),
            elector=LeaseElector(api=coord, namespace=NS, name="owc-controller", identity=who,
                                 renew_interval_s=INTERVAL,
                                 clock=lambda: EPOCH + dt.timedelta(seconds=now[0])),
        )
    return out


def high(t):  # up to t=60: 20 in flight need 3 engine replicas (8 each); 250 gateway requests, 3 processes
    return t < 60


@pytest.mark.parametrize("burst, scalings", [
    # No burst: pod-b, leader from t=135, continues the window that opened at t=60 and scales
    # down at t=180 — as an uninterrupted leader would, not at 255 (a window restarted at
    # 135); pod-a, leader again from t=225, takes the last scale-down (t=180) from the Lease:
    # a step restarts the engine's window, so its next step waits for down_stabilization_s
    # after it (t=300), as pod-b's would have — not at once, and not from t=225.
    (False, [(0, "pod-a", MODEL, 3), (0, "pod-a", GATEWAY, 3),
             (180, "pod-b", MODEL, 2), (180, "pod-b", GATEWAY, 1), (300, "pod-a", MODEL, 1)]),
    # A burst at t=150-165 (while pod-b leads) breaks the window. pod-a remembered the window
    # it saw open at t=60 — acting on it when it regains the Lease at t=225 would scale down
    # at once; it rebuilds the window from history (low again since t=180) instead, and
    # scales down at t=300, then once the restarted window has held again (t=420).
    (True, [(0, "pod-a", MODEL, 3), (0, "pod-a", GATEWAY, 3),
            (300, "pod-a", MODEL, 2), (300, "pod-a", GATEWAY, 1), (420, "pod-a", MODEL, 1)]),
])
def test_leadership_moved_mid_scale_down_window(burst, scalings):
    api = FakeApi(OWC)
    now = [0.0]

    def busy(t):
        return high(t) or (burst and 150 <= t < 180)

    timeline = Timeline(lambda: now[0], ongoing=lambda t: 20 if busy(t) else 3,
                        gateway=lambda t: 250 if busy(t) else 50)
    log = []
    try:
        ctl = pods(api, timeline, now, log)
        remembered = None
        for step in range(int(420 / INTERVAL) + 1):
            now[0] = step * INTERVAL
            # pod-a stalls (a long GC pause, an overrunning round, a partition) from t=105 to t=225;
            # pod-b from t=195 on.
            if not 105 <= now[0] < 225:
                if now[0] == 225:
                    remembered = ctl["pod-a"].state[MODEL]
                ctl["pod-a"].reconcile_once()
            if now[0] < 195:
                ctl["pod-b"].reconcile_once()
            if now[0] == 135:  # pod-b took over and rebuilt the window: open since t=60, as pod-a saw it
                assert ctl["pod-b"].metrics.leader._value.get() == 1
                assert ctl["pod-b"].state[MODEL].low_since == 60 and ctl["pod-b"].state[GATEWAY].low_since == 60
        assert log == scalings
        # what pod-a remembered when it came back: the window of its earlier lead, never used
        assert remembered is not None and remembered.low_since == 60
        # no flapping: after the scale-up, only scale-downs, each target's at least down_cooldown_s apart
        for key in (MODEL, GATEWAY):
            seq = [(t, n) for t, _, k, n in log if k == key]
            assert seq[0] == (0, 3) and all(b[1] < a[1] for a, b in zip(seq, seq[1:]))  # up once, then only down
            assert all(b[0] - a[0] >= 60 for a, b in zip(seq[1:], seq[2:]))
        # both rebuilt from Prometheus's history over the window (+1 step), at the reconcile interval
        calls = {(k, end - start, step) for k, start, end, step in timeline.history_calls}
        assert calls == {(MODEL, 135.0, INTERVAL), (GATEWAY, 135.0, INTERVAL)}
        assert ctl["pod-a"].metrics.rebuilds.labels(MODEL, "prometheus")._value.get() == 2  # t=0 and t=225
        lease = clients(api.url)[1].read_namespaced_lease("owc-controller", NS)
        events = json.loads(lease.metadata.annotations[EVENTS_ANNOTATION])
        assert events[MODEL][1] == scalings[-1][0] and lease.spec.holder_identity == "pod-a"
        assert lease.spec.lease_duration_seconds == 35
    finally:
        api.server.shutdown()


def test_a_follower_forgets_its_windows():
    api = FakeApi(OWC)
    now = [0.0]
    timeline = Timeline(lambda: now[0], ongoing=lambda t: 20 if high(t) else 3, gateway=lambda t: 50)
    try:
        ctl = pods(api, timeline, now, [])
        for t in (0, 15, 30, 45, 60, 75):
            now[0] = t
            ctl["pod-a"].reconcile_once()
        assert ctl["pod-a"].state[MODEL].low_since == 60
        # another pod holds the Lease now (pod-a's lapsed while it stalled): pod-a follows, forgetting
        now[0] = 120
        assert ctl["pod-b"].reconcile_once() != {}
        now[0] = 135
        assert ctl["pod-a"].reconcile_once() == {} and ctl["pod-a"].state == {}
        assert ctl["pod-a"].metrics.leader._value.get() == 0
    finally:
        api.server.shutdown()


def test_a_round_that_overruns_the_lease_stops_acting():
    """pod-a's round stalls on a slow Prometheus read for longer than the Lease; pod-b takes
    over meanwhile and scales. When pod-a's round goes on, it neither patches the target it
    was deciding (the scaling is recorded on the Lease first, which pod-a no longer holds)
    nor goes on to the next."""
    api = FakeApi(OWC)
    now = [0.0]
    log = []
    timeline = Timeline(lambda: now[0], ongoing=lambda t: 20, gateway=lambda t: 250)
    try:
        ctl = pods(api, timeline, now, log)
        stalled = {"done": False}
        real_read = timeline.read

        def slow_read(key):
            if key == MODEL and not stalled["done"] and now[0] == 0:
                stalled["done"] = True
                now[0] = 40.0  # the read took 40 s: the Lease (35 s) lapsed
                ctl["pod-b"].reconcile_once()  # pod-b, meanwhile
            return real_read(key)

        timeline.read = slow_read
        out = ctl["pod-a"].reconcile_once()
        assert out == {}  # pod-a acted on nothing
        assert [(who, key) for _, who, key, _ in log] == [("pod-b", MODEL), ("pod-b", GATEWAY)]
        assert ctl["pod-a"].state == {} and ctl["pod-a"].metrics.leader._value.get() == 0
    finally:
        api.server.shutdown()


def test_an_overrunning_round_within_the_lease_keeps_leadership():
    """A 25 s round at a 15 s interval: the default Lease (35 s) holds; a 50 s round renews
    it between targets (keep), so the other pod never takes over."""
    api = FakeApi(OWC)
    now = [0.0]
    try:
        _, coord = clients(api.url)
        a, b = (LeaseElector(api=coord, namespace=NS, name="owc-controller", identity=who, renew_interval_s=15,
                             clock=lambda: EPOCH + dt.timedelta(seconds=now[0])) for who in ("pod-a", "pod-b"))
        assert a.is_leader()
        now[0] = 25.0
        assert not b.is_leader()  # a's round is still running, 25 s after its renewal
        assert a.is_leader()  # its next round
        now[0] = 45.0
        assert a.keep()  # mid-round, 20 s after the renewal: renews
        now[0] = 75.0
        assert not b.is_leader()  # 30 s after a's mid-round renewal
        now[0] = 80.0
        assert a.keep() and a.term == 1  # the same term throughout
        now[0] = 200.0
        assert b.is_leader() and b.term == 1
        assert not a.keep() and not a.record({"x": "1"})  # lost: and no recording either
        now[0] = 300.0
        assert a.is_leader() and a.term == 2  # a new term: nothing from the first may be acted on
    finally:
        api.server.shutdown()


def kubeconfig(tmp_path, url):
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": url}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
        "users": [{"name": "t", "user": {"token": "x"}}],
    }))
    return path


def invoke(tmp_path, config, *args, env=None):
    from cluster.cli import app

    path = tmp_path / "owc.yaml"
    path.write_text(yaml.safe_dump(config))
    return CliRunner().invoke(app, ["controller", str(path), "--metrics-port", "0", *args], env=env or {})


def test_cli_refuses_a_lease_shorter_than_two_intervals(tmp_path):
    r = invoke(tmp_path, CONFIG, "--kubernetes", "--interval", "15", "--lease-duration", "20")
    assert r.exit_code == 2 and "at least 2 x the reconcile interval" in r.output, r.output


def test_cli_with_nothing_to_control_exits(tmp_path):
    r = invoke(tmp_path, {**CONFIG, "models": {MODEL: {**CONFIG["models"][MODEL], "autoscaling": {"enabled": False}}},
                          "gateway": {**CONFIG["gateway"], "replicas": 2}}, "--kubernetes")
    assert r.exit_code == 2 and "nothing to control" in r.output


def test_cli_runs_for_gateway_autoscaling_alone(tmp_path):
    """No model autoscales, the gateway does: `owc controller` runs (one round here, against
    the in-test API server; Prometheus unreachable: it holds)."""
    api = FakeApi({**OWC, "gateway": CONFIG["gateway"]})
    try:
        cfg = {**CONFIG, "models": {MODEL: {**CONFIG["models"][MODEL], "autoscaling": {"enabled": False}}}}
        path = tmp_path / "owc.yaml"
        path.write_text(yaml.safe_dump(cfg))
        # its own process: the kubernetes client reads KUBECONFIG at import and keeps the loaded config globally
        r = subprocess.run(
            [sys.executable, "-m", "cluster.cli", "controller", str(path), "--metrics-port", "0", "--kubernetes",
             "--once", "--namespace", NS, "--rayservice", NAME, "--identity", "pod-x",
             "--prometheus", "http://127.0.0.1:9", "--interval", "10"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "KUBECONFIG": str(kubeconfig(tmp_path, api.url)),
                                                              "COLUMNS": "200"})
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        assert "owc-gateway every 10s" in out and "Lease owc-controller for 25s" in out
        assert "owc-gateway: 1 (hold:no_data)" in out
        lease = clients(api.url)[1].read_namespaced_lease("owc-controller", NS)
        assert lease.spec.holder_identity == "pod-x" and lease.spec.lease_duration_seconds == 25
        assert api.patches == []
    finally:
        api.server.shutdown()
