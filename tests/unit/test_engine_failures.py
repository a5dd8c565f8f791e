"""Why an engine did not start (cluster/engine/failures.py): the hint table row by row against
vLLM's own messages, the root cause picked out of a real-shaped vLLM log, the log file found
through owc's own start error, and Serve's status read deployment by deployment."""

from __future__ import annotations

import asyncio
import re
import sys
from types import SimpleNamespace

import pytest

from cluster.engine.failures import HINTS, DeployError, advice_for, diagnose, engine_error, failing, log_path_in
from cluster.process import Command, ServerProcess, ServerStartError

# vLLM 0.32's messages (copied from its source) -> a piece of the advice owc gives.
TABLE = [
    ("ValueError: Available memory on node 0 (21.17/23.54 GiB) on startup is less than desired CPU memory "
     "utilization (0.92, 21.66 GiB).", "models.m.engine_kwargs.kv_cache_memory_bytes"),
    ("ValueError: Free memory on device cuda:0 (3.1/79.1 GiB) on startup is less than desired GPU memory "
     "utilization (0.9, 71.2 GiB).", "models.m.engine_kwargs.gpu_memory_utilization"),
    ("ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`",
     "models.m.max_model_len"),
    ("ValueError: To serve at least one request with the model's max seq len (8192), (0.5 GiB KV cache is needed, "
     "which is larger than the available KV cache memory (0.06 GiB).", "models.m.engine_kwargs.kv_cache_memory_bytes"),
    ("Value error, User-specified max_model_len (100000) is greater than the derived max_model_len "
     "(max_position_embeddings=4096.0 or model_max_length=None in model's config.json).", "lower it"),
    # huggingface_hub, seen through vLLM 0.32 for a local path that does not exist; transformers' own wording.
    ("huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or 'namespace/repo_name': "
     "'/nonexistent/model'. Use `repo_type` argument if needed.", "`models.m.source` is neither a model directory"),
    ("OSError: /models/llama is not a local folder and is not a valid model identifier listed on "
     "'https://huggingface.co/models'", "`models.m.source`"),
    ("AssertionError: Not enough allowed NUMA nodes to bind threads of 2 local CPUWorkers.",
     "models.m.engine_env.VLLM_CPU_OMP_THREADS_BIND"),
    ("ModuleNotFoundError: No module named 'foo'", None),
]


@pytest.mark.parametrize("message, advice", TABLE)
def test_hint_table(message, advice):
    got = advice_for(message, "m")
    assert (got is None) if advice is None else (advice in got)


def test_every_hint_has_a_row():
    for pattern, _ in HINTS:
        assert any(re.search(pattern, message) for message, _ in TABLE), pattern


# The shape of a vLLM-CPU log that refused to start (trimmed): the cause in the engine
# core's prefixed traceback, then wrappers that only point back at it.
VLLM_LOG = """\
(APIServer pid=9596) INFO 12-05 01:20:37 [api_utils.py:286] non-default args: {'model': '/m'}
(EngineCore pid=9949) ERROR 12-05 01:20:58 [core.py:1510] Traceback (most recent call last):
(EngineCore pid=9949) ERROR 12-05 01:20:58 [core.py:1510]     raise ValueError(
(EngineCore pid=9949) ERROR 12-05 01:20:58 [core.py:1510] ValueError: Available memory on node 0 (19.55/23.54 GiB) \
on startup is less than desired CPU memory utilization (0.92, 21.66 GiB).
Traceback (most recent call last):
  File "/v/vllm/v1/executor/multiproc_executor.py", line 815, in wait_for_ready
    raise e from None
Exception: WorkerProc initialization failed due to an exception in a background process. See stack trace for root cause.
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
(APIServer pid=9596) INFO 12-05 01:21:00 [utils.py:628] [shutdown] Process manager: send sigterm to process EngineCore
"""

PYDANTIC = """\
  File "/v/pydantic/_internal/_dataclasses.py", line 121, in __init__
pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig
  Value error, User-specified max_model_len (100000) is greater than the derived max_model_len (x)
    For further information visit https://errors.pydantic.dev/2.14/v/value_error
"""


def test_the_cause_not_the_wrappers():
    assert engine_error(VLLM_LOG).startswith("ValueError: Available memory on node 0 (19.55/23.54 GiB)")
    wrapped = "Traceback (most recent call last):\nRuntimeError: Engine core initialization failed. See root cause above."
    assert engine_error(wrapped).startswith("RuntimeError: Engine core")  # nothing better: the wrapper
    assert engine_error("INFO all good\n") is None


def test_a_message_on_the_next_lines_belongs_to_its_exception():
    error = engine_error(PYDANTIC)
    assert error.startswith("pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig Value error")
    assert "For further information" not in error
    assert advice_for(error, "m")


def _start_error(tmp_path, log_text: str) -> ServerStartError:
    """owc's own start error of a process that printed ``log_text`` and exited."""
    log = tmp_path / "engine-m-abc.log"
    argv = [sys.executable, "-c", f"import sys; sys.stdout.write({log_text!r}); sys.exit(1)"]
    proc = ServerProcess(Command(argv), log_path=log)
    proc.start()
    with pytest.raises(ServerStartError) as e:
        asyncio.run(proc.wait_ready(30))
    return e.value


def test_the_log_file_is_found_through_owcs_start_error(tmp_path):
    err = _start_error(tmp_path, VLLM_LOG + "x\n" * 3000)  # the cause is beyond the tail the error carries
    message = f"The deployment failed to start 1 times in a row. Error:\nray::ServeReplica\n{type(err).__name__}: {err}"
    assert log_path_in(message) == str(tmp_path / "engine-m-abc.log")
    f = diagnose("engine-m", message, "m")
    assert f.error.startswith("ValueError: Available memory on node 0")
    assert f.log_path == str(tmp_path / "engine-m-abc.log")
    assert "models.m.engine_kwargs.kv_cache_memory_bytes" in f.advice
    text = "\n".join(f.lines())
    assert text.startswith("engine m did not start:") and f"engine log: {f.log_path}" in text and "fix: " in text


def test_without_the_log_file_the_message_says_it(tmp_path):
    message = "Error:\nServerStartError: process exited with code 1 during start-up; log /nonexistent/e.log:\n" + VLLM_LOG
    f = diagnose("engine-m", message, "m")
    assert f.error.startswith("ValueError: Available memory") and f.log_path == "/nonexistent/e.log"
    g = diagnose("owc-gateway", "Error:\nRuntimeError: the gateway's port 8000 is taken")
    assert g.lines()[:2] == ["deployment owc-gateway did not start:", "  RuntimeError: the gateway's port 8000 is taken"]
    assert g.log_path is None and g.advice is None


def test_failing_deployments_from_serve_status():
    retry = "A replica failed to start with exception. Retrying 2 more time(s). Error:\nValueError: boom"
    deployments = {
        "engine-m": SimpleNamespace(status=SimpleNamespace(value="DEPLOY_FAILED"),
                                    message="The deployment failed to start 3 times in a row. Error:\nValueError: boom"),
        "engine-n": SimpleNamespace(status="UPDATING", message=retry),
        "owc-gateway": SimpleNamespace(status="HEALTHY", message=""),
    }
    models = {"engine-m": "m", "engine-n": "n"}
    assert [(f.deployment, f.model, f.error) for f in failing(deployments, models)] == [("engine-m", "m", "ValueError: boom")]
    assert [f.deployment for f in failing(deployments, models, retrying=True)] == ["engine-m", "engine-n"]
    e = DeployError("Serve could not deploy owc: Failed to update the deployments ['engine-m'].",
                    failing(deployments, models))
    assert str(e).splitlines()[1:] == ["engine m did not start:", "  ValueError: boom"]


def test_deploy_and_wait_warns_while_serve_retries_then_raises():
    """owc's wait on Serve (cluster.runner.deploy_and_wait) over a scripted status sequence."""
    from cluster.runner import deploy_and_wait

    def app(status, message):
        d = SimpleNamespace(status=status, message=message)
        return SimpleNamespace(applications={"owc": SimpleNamespace(status=status, message="Failed to update",
                                                                     deployments={"engine-m": d})})

    retry = "A replica failed to start with exception. Retrying 2 more time(s). Error:\nValueError: boom"
    script = iter([app("DEPLOYING", ""), app("DEPLOYING", retry), app("DEPLOYING", retry),
                   app("DEPLOY_FAILED", "The deployment failed to start 3 times in a row. Error:\nValueError: boom")])
    warned: list[str] = []
    with pytest.raises(DeployError) as e:
        deploy_and_wait("owc", {"engine-m": "m"}, warned.append, status=lambda: next(script), period_s=0)
    assert warned == ["engine m failed to start, Serve retries it:\n  ValueError: boom"]  # once, not per poll
    assert [f.error for f in e.value.failures] == ["ValueError: boom"]
    running = iter([app("DEPLOYING", ""), app("RUNNING", "")])
    deploy_and_wait("owc", {}, warned.append, status=lambda: next(running), period_s=0)


def test_a_deployment_that_is_not_an_engine_has_a_log_not_an_engine_log():
    from cluster.engine.failures import StartFailure

    gw = StartFailure(deployment="owc-gateway", model=None, error="OSError: x", log_path="/tmp/gw.log", advice=None)
    assert gw.lines()[-1] == "  log: /tmp/gw.log"
    engine = StartFailure(deployment="engine-m", model="m", error="OSError: x", log_path="/tmp/e.log", advice=None)
    assert engine.lines()[-1] == "  engine log: /tmp/e.log"


def test_a_gateway_process_refusing_to_start_is_told_by_its_own_words(tmp_path):
    """The gateway process (cluster.gateway.main) states why it stopped on one line,
    "gateway: <why>"; Serve wraps the replica's start error in "RuntimeError: Traceback (most
    recent call last):", which was shown instead. With the log, and with it gone (the tail
    that the start error carries)."""
    log = tmp_path / "gateway-abc.log"
    text = "stored-response ids are valid on this gateway process only\ngateway: [Errno 98] Address already in use\n"
    proc = ServerProcess(Command([sys.executable, "-c", f"import sys; sys.stderr.write({text!r}); sys.exit(2)"]),
                         log_path=log)
    proc.start()
    with pytest.raises(ServerStartError) as e:
        asyncio.run(proc.wait_ready(30))
    message = ("The deployment failed to start 3 times in a row. Error:\n"
               "ray::ServeReplica:owc:owc-gateway.initialize_and_get_metadata() (pid=1, ip=127.0.0.1)\n"
               "RuntimeError: Traceback (most recent call last):\n"
               '  File "/v/ray/serve/_private/replica.py", line 1, in initialize_and_get_metadata\n'
               f"cluster.process.ServerStartError: {e.value}")
    for present in (True, False):
        if not present:
            log.unlink()
        f = diagnose("owc-gateway", message)
        assert f.error == "gateway: [Errno 98] Address already in use", (present, f.error)
        assert f.lines()[-1] == f"  log: {log}"
    assert engine_error("RuntimeError: Traceback (most recent call last):\nOSError: x\n") == "OSError: x"


def test_a_gateway_replica_that_stops_keeps_its_processs_log(tmp_path):
    """docs/operations.md: a gateway process's log stays after its replica stops (the cluster's
    stop, a scale-down), as an engine's does; only its working directory goes. It was removed
    with the replica, so the log of an incident one stops the cluster to look into was gone."""

    from cluster.gateway.edge.deployment import GatewayReplica

    async def nothing(*_a, **_k):
        return None

    replica = GatewayReplica.__new__(GatewayReplica)  # its state, without Ray or a process
    replica._sync, replica._sd_dir = SimpleNamespace(stop=nothing), None
    replica._proc, replica._drain_s = SimpleNamespace(stop_async=nothing), 0
    replica._dir = tmp_path / "gw"
    replica._dir.mkdir()
    replica._log = tmp_path / "gateway-abc.log"
    replica._log.write_text("tenancy store redis://127.0.0.1:1/0 failed\n")
    asyncio.run(replica.__del__())
    assert replica._log.exists() and not replica._dir.exists()
