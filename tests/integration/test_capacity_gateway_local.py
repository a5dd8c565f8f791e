"""The capacity controller sizes the gateway on a real local Ray Serve: an `owc-gateway`
deployment in the owc application (run with ``external_scaler_enabled``, as `owc serve`
runs it) goes from 1 to 3 replicas when the gateway signals ask for it and back to 1 once
the lower count has been wanted for the stabilization window — through RayServeActuator,
the Serve controller's external-scaler API, touching no other deployment.

A stand-in replica (no gateway process, no engines: this is about the replica count) and a
Ray of its own, in a child process, so that the session cluster's Ray and its owc
application are left alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent('''
    import os, sys, time, tempfile
    from cluster.runner import RAY_ENV
    os.environ.update(RAY_ENV)
    import ray
    from ray import serve
    from prometheus_client import CollectorRegistry
    from cluster.capacity.actuators import RayServeActuator
    from cluster.capacity.controller import CapacityController
    from cluster.capacity.gateway_policy import GATEWAY, GatewaySignals
    from cluster.config.loader import parse_config

    @serve.deployment(name="owc-gateway", num_replicas=1, ray_actor_options={"num_cpus": 0.1},
                      graceful_shutdown_timeout_s=1)
    class Stub:
        def __call__(self, *a):
            return "ok"

    @serve.deployment(name="owc-registry", num_replicas=1, ray_actor_options={"num_cpus": 0.1})
    class Other:
        def __init__(self, gw):
            pass

    def wait(pred, timeout, what):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return
            time.sleep(0.5)
        sys.exit(f"timed out waiting for {what}: {act.replicas(GATEWAY)}")

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="owc-ray-"))
    try:
        serve.start(proxy_location="Disabled")
        serve.run(Other.bind(Stub.bind()), name="owc", route_prefix=None, external_scaler_enabled=True)
        cfg = parse_config({"models": {"m": {"source": "external"}},
                            "gateway": {"replicas": {"min": 1, "max": 3},
                                        "autoscaling": {"target_in_flight_per_replica": 10, "up_cooldown_s": 0,
                                                        "down_stabilization_s": 2, "down_cooldown_s": 0}}})
        load = {"in_flight": 25.0}

        class Signals:
            def read(self, key):
                return GatewaySignals(at=time.time(), in_flight=load["in_flight"])

        act = RayServeActuator()
        ctl = CapacityController(config=cfg, signals=Signals(), actuator=act, registry=CollectorRegistry(),
                                 interval_s=1.0)
        assert ctl.models == [GATEWAY], ctl.models
        assert act.replicas(GATEWAY) == (1, 1), act.replicas(GATEWAY)
        d = ctl.reconcile_once()[GATEWAY]
        assert (d.target, d.reason) == (3, "up:load"), d
        wait(lambda: act.replicas(GATEWAY) == (3, 3), 60, "3 gateway replicas")
        load["in_flight"] = 4.0
        reasons = []
        end = time.monotonic() + 30
        while act.replicas(GATEWAY)[0] != 1 and time.monotonic() < end:
            reasons.append(ctl.reconcile_once()[GATEWAY].reason)
            time.sleep(1.0)
        assert reasons[0] == "hold:down_stabilizing" and reasons[-1] == "down:low_load", reasons
        wait(lambda: act.replicas(GATEWAY) == (1, 1), 60, "1 gateway replica")
        other = serve.status().applications["owc"].deployments["owc-registry"]
        assert sum(other.replica_states.values()) == 1, other.replica_states
        print("OK", reasons)
    finally:
        serve.shutdown()
        ray.shutdown()
''')


def test_the_controller_scales_the_gateway_deployment_on_local_ray_serve():
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-3000:] + r.stderr[-6000:]
