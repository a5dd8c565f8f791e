"""One real cluster per session: local Ray + Serve, two real vLLM-CPU engines (the tiny
demo Llama at TP=1, and the same weights at TP=2), the gateway on a free port."""

from __future__ import annotations

import os

import httpx
import openai
import pytest

from cluster.config.loader import parse_config
from cluster.process import free_port
from cluster.runner import LocalCluster

ENGINE_KWARGS = {"enforce_eager": True, "kv_cache_memory_bytes": 64 << 20, "max_num_seqs": 16}


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


@pytest.fixture(scope="session")
def cluster(model_cache, tmp_path_factory):
    cfg = parse_config({
        "models": {
            "tiny-llama": model_entry(aliases=["demo"]),
            "tiny-llama-tp2": model_entry(
                tensor_parallel_size=2,
                engine_env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "0|1"},
            ),
        },
        "gateway": {"host": "127.0.0.1", "port": free_port()},
        "model_cache_dir": model_cache,
    })
    c = LocalCluster(cfg, temp_dir=str(tmp_path_factory.mktemp("ray")))
    try:
        c.start(ready_timeout_s=600)
        yield c
    finally:
        c.stop()


@pytest.fixture
def client(cluster):
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def engine_urls(model: str) -> list[str]:
    from ray import serve

    registry = serve.get_deployment_handle("owc-registry", app_name="owc")
    return [e.url for e in registry.snapshot.remote().result() if e.model == model]


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, value = line.rsplit(" ", 1)
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


os.environ.setdefault("HF_HUB_OFFLINE", "1")
