"""The rollouts' conformance gate in `owc controller` on Kubernetes (issue 30, must-show 3):
the leader finds one stable and one candidate engine replica among the release's engine pods
(listed through the in-test API server, each fake engine naming its model and version on
/health as EngineGuard makes an owc-started vLLM do), runs `owc conformance`'s cases against
both with the engine credential, and applies the verdict. A candidate without the tool-call
parser stable has is aborted with the failed rows named, its weight never above 0; a
matching one starts step 1; a leader that loses the Lease mid-gate writes nothing and the new
leader runs the gate again."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import yaml
from kubernetes import client

from cluster.capacity.rollout import RolloutState
from cluster.config.loader import parse_config
from cluster.discovery.rollout_configmap import ConfigMapRollouts
from cluster.engine.guard import identity_env
from cluster.rollouts.conformance import compare_versions
from cluster.rollouts.engine_pods import EnginePods, pod_urls
from cluster.rollouts.leader import configmap_name
from tests.conftest import fake_engine_argv, server
from tests.unit.test_capacity_kubernetes import NAME, NS, FakeApi
from tests.unit.test_rollout_controller import FakePrometheus, Pod, state

KEY = "engine-key-of-the-gate-tests"
SELECTOR = "app.kubernetes.io/instance=llm,owc.io/component=engine"
OWC = {"models": {"tiny": {
    "source": "demo:tiny-llama", "candidate": {"engine_kwargs": {"max_num_seqs": 8}},
    "rollout": {"steps": [20, 50], "step_s": 60, "gates": {"min_requests": 5}},  # conformance: true (the default)
}}}


@pytest.fixture(scope="module")
def engines():
    """Engine processes by role: stable, a matching candidate, one without auto tool choice."""
    def engine(version: str, *extra: str):
        env = {"OWC_ENGINE_KEY": KEY, **identity_env("tiny", version)}
        return server([*fake_engine_argv("tiny", ttft_ms=1, itl_ms=0), *extra], env=env)

    with engine("stable") as s, engine("candidate") as good, engine("candidate", "--no-auto-tool-choice") as bad:
        yield {"stable": s.url, "good": good.url, "bad": bad.url}


@pytest.fixture
def api():
    a = FakeApi(OWC)
    yield a
    a.server.shutdown()


def add_pod(api: FakeApi, name: str, url: str | None, *, ready: bool = True, component: str = "engine") -> None:
    port = int(url.rsplit(":", 1)[1]) if url else 1
    api.objects[f"/api/v1/namespaces/{NS}/pods/{name}"] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app.kubernetes.io/instance": "llm", "owc.io/component": component}},
        "spec": {"containers": [{"name": "ray-worker", "ports": [{"name": "engine", "containerPort": port}]}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


def leader_pod(api: FakeApi, who: str, now: list[float], compare=None) -> Pod:
    pods = EnginePods(client.CoreV1Api(client.ApiClient(client.Configuration(host=api.url))), NS, SELECTOR)
    compare = compare or (lambda urls, model: compare_versions(urls, model, engine_key=KEY))
    return Pod(api, who, now, FakePrometheus(), config=parse_config(OWC), engines=pods.replica_urls, compare=compare)


def test_engine_pods_name_one_replica_of_each_version(api, engines):
    free = engines["good"].rsplit(":", 1)[0] + ":1"  # nothing listens there
    add_pod(api, "a-starting", engines["bad"], ready=False)
    add_pod(api, "b-no-engine-yet", free)
    add_pod(api, "c-gateway", engines["good"], component="gateway")
    pods = EnginePods(client.CoreV1Api(client.ApiClient(client.Configuration(host=api.url))), NS, SELECTOR)
    assert pods.replica_urls("tiny") == {}
    add_pod(api, "d-stable", engines["stable"])
    add_pod(api, "e-candidate", engines["good"])
    assert pods.replica_urls("tiny") == {"stable": engines["stable"], "candidate": engines["good"]}
    assert pods.replica_urls("other") == {}
    api.objects[f"/api/v1/namespaces/{NS}/pods/d-stable"]["status"]["podIP"] = "fd00::7"
    assert pod_urls(client.CoreV1Api(client.ApiClient(client.Configuration(host=api.url))).list_namespaced_pod(
        NS, label_selector=SELECTOR))[-1] == f"http://[fd00::7]:{engines['stable'].rsplit(':', 1)[1]}"


def verdict(api: FakeApi, pod: Pod, seen: list[RolloutState], timeout_s: float = 60) -> RolloutState:
    """Rounds until the gate's verdict is written (its cases run on a thread of their own;
    each round meanwhile answers "no verdict yet"); every state written is kept in ``seen``."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert pod.round() is True
        seen.append(state(api))
        if seen[-1].state != "pending" or time.monotonic() > deadline:
            return seen[-1]
        time.sleep(0.05)


def test_a_candidate_that_fails_conformance_is_aborted_before_any_weight(api, engines):
    now, seen = [0.0], []
    a = leader_pod(api, "pod-a", now)
    for t in (0, 5):  # no engine pod up yet: no verdict, pending
        now[0] = t
        assert a.round() is True
        seen.append(state(api))
    add_pod(api, "stable-0", engines["stable"])
    add_pod(api, "candidate-0", engines["bad"])
    now[0] = 10
    st = verdict(api, a, seen)
    assert st.state == "aborted" and {s.weight for s in seen} == {0}  # never a request's share
    assert {s.state for s in seen[:-1]} == {"pending"} and len(seen) > 3
    assert st.reason.startswith("conformance failed: ") and "chat tool_choice auto" in st.reason
    assert "chat json_schema" not in st.reason  # only the rows that differ
    deps = yaml.safe_load(api.rayservice()["spec"]["serveConfigV2"])["applications"][0]["deployments"]
    assert {"name": "engine-tiny-candidate", "num_replicas": 1} in deps  # drained (Serve's config has no 0)


def test_a_matching_candidate_starts_step_1_and_a_gate_that_never_finds_both_versions_aborts(api, engines):
    now = [0.0]
    add_pod(api, "stable-0", engines["stable"])
    a = leader_pod(api, "pod-a", now)
    assert a.round() is True and state(api).state == "pending"  # no candidate replica yet
    add_pod(api, "candidate-0", engines["good"])
    now[0] = 5
    st = verdict(api, a, [])
    assert (st.state, st.step, st.weight, st.window_start) == ("analysing", 0, 20, 5.0)
    # another rollout whose candidate never comes up: aborted once the wait is over (600 s startup + 600)
    del api.objects[f"/api/v1/namespaces/{NS}/configmaps/{configmap_name(NAME)}"]
    del api.objects[f"/api/v1/namespaces/{NS}/pods/candidate-0"]
    b = leader_pod(api, "pod-a", now)
    assert b.round() is True and state(api).state == "pending"
    now[0] = 5 + 1190
    assert b.round() is True and state(api).state == "pending"
    now[0] = 5 + 1210
    assert b.round() is True
    st = state(api)
    assert (st.state, st.weight) == ("aborted", 0) and "no replica of each version after 1210s" in st.reason


def test_the_analysis_goes_on_while_the_gate_runs_an_abort_applies_at_once(api, engines):
    now, release = [0.0], threading.Event()
    add_pod(api, "stable-0", engines["stable"])
    add_pod(api, "candidate-0", engines["good"])
    a = leader_pod(api, "pod-a", now, compare=lambda urls, model: release.wait(30) and [])  # minutes on CPU
    assert a.round() is True and state(api).state == "pending"  # the cases started, the tick returned
    ConfigMapRollouts(client.CoreV1Api(client.ApiClient(client.Configuration(host=api.url))), NS,
                      configmap_name(NAME)).submit("tiny", "abort", "ops")
    now[0] = 1
    assert a.round() is True
    assert (state(api).state, state(api).weight) == ("aborted", 0)
    release.set()  # the gate's late "all match" changes nothing
    time.sleep(0.2)
    now[0] = 2
    assert a.round() is True and state(api).state == "aborted"


@pytest.mark.parametrize("stale", ["verdict", "error"])
def test_a_leader_that_loses_the_lease_mid_gate_writes_nothing_and_the_gate_runs_again(api, engines, stale):
    """a's cases end after a lost the Lease (with a verdict, or an error that would abort as
    'could not run'): a writes nothing; back as leader in a new term it discards that run and
    runs the gate again."""
    now = [0.0]
    add_pod(api, "stable-0", engines["stable"])
    add_pod(api, "candidate-0", engines["bad"])
    started, release, finished, b_block = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    calls = []

    def a_compare(urls, model):
        calls.append(urls)
        if len(calls) > 1:  # the run of a's second term
            return ["chat tool_choice auto"]
        started.set()
        try:
            assert release.wait(30)
            if stale == "error":
                raise ConnectionError("a's stale engine went away")
            return ["a's stale verdict"]
        finally:
            finished.set()

    a = leader_pod(api, "pod-a", now, compare=a_compare)
    b = leader_pod(api, "pod-b", now, compare=lambda urls, model: b_block.wait(30) and [])
    assert a.round() is True and started.wait(30)  # a leads; its cases run
    for t in (5, 10):  # the capacity rounds renew the Lease while the gate runs: b stays a follower
        now[0] = t
        assert a.round() is True and b.round() is False
    assert state(api).state == "pending"
    now[0] = 30  # a stops renewing (paused): its Lease, renewed at 10 for 15 s, lapsed at 25
    assert b.round() is True  # b leads and starts its own run (which hangs)
    path = f"/api/v1/namespaces/{NS}/configmaps/{configmap_name(NAME)}"
    rv = api.objects[path]["metadata"]["resourceVersion"]
    release.set()  # a's cases end after a lost the Lease
    assert finished.wait(30)
    assert a.rollouts.tick() is False  # a is no leader: its run's verdict is not taken
    assert api.objects[path]["metadata"]["resourceVersion"] == rv and state(api).state == "pending"
    now[0] = 50  # b is gone too (its Lease, taken at 30, lapsed at 45): a leads again, in a new term
    st = verdict(api, a, [])
    assert len(calls) == 2  # the stale run discarded, the gate run again
    assert st.state == "aborted" and st.reason == "conformance failed: chat tool_choice auto"
    b_block.set()


def test_owc_controller_once_holds_step_1_for_the_gate_on_the_engine_pods(api, engines, tmp_path):
    """The CLI's wiring (its own process: the kubernetes client keeps KUBECONFIG globally):
    with --engine-pods the gate is on (no candidate pod yet: pending, weight 0, where without
    it step 1 would start); without the engine credential (--engine-key-file, $OWC_ENGINE_KEY)
    it refuses to start."""
    from tests.unit.test_capacity_failover import kubeconfig

    add_pod(api, "stable-0", engines["stable"])
    cfg = tmp_path / "owc.yaml"
    cfg.write_text(yaml.safe_dump(OWC))
    argv = [sys.executable, "-m", "cluster.cli", "controller", str(cfg), "--kubernetes", "--once", "--metrics-port", "0",
            "--interval", "5", "--prometheus", "http://127.0.0.1:1", "--namespace", NS, "--rayservice", NAME,
            "--identity", "pod-a", "--rollout-configmap", configmap_name(NAME), "--engine-pods", SELECTOR]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig(tmp_path, api.url)), "COLUMNS": "200"}
    env.pop("OWC_ENGINE_KEY", None)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "OWC_ENGINE_KEY" in r.stdout + r.stderr
    (tmp_path / "engine-key").write_text(KEY + "\n")  # the chart mounts the Secret as a file
    r = subprocess.run([*argv, "--engine-key-file", str(tmp_path / "engine-key")], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rollout of tiny: pending, step 1, weight 0%" in r.stdout + r.stderr
    assert f"conformance gate on the engine pods {SELECTOR}" in r.stdout + r.stderr
    st = state(api)
    assert isinstance(st, RolloutState) and (st.state, st.weight) == ("pending", 0)
