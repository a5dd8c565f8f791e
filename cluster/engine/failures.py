"""Why a deployment's replica did not start, in words a user can act on: the engine's own
exception (type and message, read from its log file where this machine can read it), the
log file's path, and what to change where owc knows (HINTS). Pure: reads Serve's status
objects and files, imports neither Ray nor vLLM."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Searched in the engine's error, then its log; the first match gives the advice.
# `{model}` is the model's name under `models:` in the owc config.
HINTS: tuple[tuple[str, str], ...] = (
    (r"less than desired CPU memory utilization",
     "on CPU, vLLM reserves `gpu_memory_utilization` (default 0.92) of the machine's memory unless the KV cache "
     "is sized: set `models.{model}.engine_kwargs.kv_cache_memory_bytes` (e.g. 1073741824 for a 1 GiB KV cache) "
     "or a lower `models.{model}.engine_kwargs.gpu_memory_utilization`"),
    (r"less than desired GPU memory utilization",
     "other processes hold this GPU's memory: free it, or set a lower "
     "`models.{model}.engine_kwargs.gpu_memory_utilization` (or `kv_cache_memory_bytes`)"),
    (r"No available memory for the cache blocks|KV cache is needed, which is larger than the available KV cache",
     "the KV cache does not hold one request of `max_model_len` tokens: set a smaller `models.{model}.max_model_len`, "
     "or a larger `models.{model}.engine_kwargs.kv_cache_memory_bytes` (or `gpu_memory_utilization`)"),
    (r"than the derived max_model_len",
     "`models.{model}.max_model_len` is beyond the model's own context length: lower it"),
    (r"Repo id must be in the form|is not a local folder and is not a valid model identifier",
     "`models.{model}.source` is neither a model directory on the engine's machine nor a hub id it can fetch: "
     "check the path (as the engines see it), give a hub id where engines have network, or `demo:tiny-llama`"),
    (r"Not enough allowed NUMA nodes",
     "tensor parallelism on CPU needs one thread range per rank: set "
     "`models.{model}.engine_env.VLLM_CPU_OMP_THREADS_BIND` (e.g. \"0|1\" for TP=2)"),
)

# Exceptions that only say "see above": the root cause is another line.
_WRAPPERS = re.compile(
    r"See (?:the )?(?:stack trace|root cause)|initialization failed|^(?:[\w.]*\.)?(?:ServerStartError|RayTaskError|"
    r"RayActorError|ActorDiedError|EngineDeadError)\b|: Traceback \(most recent call last\)"
)
# vLLM's log prefixes: "(EngineCore pid=1) ERROR 12-05 01:20:55 [core.py:1] ".
_PREFIX = re.compile(r"^(?:\([\w-]+ pid=\d+\)\s*)?(?:(?:ERROR|WARNING|INFO|DEBUG|CRITICAL)\s+\S+\s+\S+\s+\[[^\]]*\]\s*)?")
# An exception line; or the gateway process's own refusal (cluster.gateway.main: "gateway: <why>").
_EXCEPTION = re.compile(r"^(?:(?:[A-Za-z_][\w.]*)?(?:Error|Exception|Exit)|[\w.-]+: error)(?::\s*\S.*)?$|^gateway: \S.*$")
_PYDANTIC_INPUT = re.compile(r"\s*\[type=\w+, input_value=.*$")  # the arguments it was given: noise
_NOT_MESSAGE = ("File ", "For further information", "Traceback")
_LOG_PATH = re.compile(r"\blog (/\S+?\.log):")
_LOG_TAIL_BYTES = 64 << 10
_MAX_ERROR_CHARS = 800


@dataclass(frozen=True)
class StartFailure:
    deployment: str
    model: str | None  # the model under `models:`, for an engine deployment
    error: str  # the exception: type and message
    log_path: str | None
    advice: str | None

    def lines(self, headline: str = "did not start") -> list[str]:
        what = f"engine {self.model}" if self.model else f"deployment {self.deployment}"
        out = [f"{what} {headline}:", f"  {self.error}"]
        if self.log_path:
            out.append(f"  {'engine log' if self.model else 'log'}: {self.log_path}")
        if self.advice:
            out.append(f"  fix: {self.advice}")
        return out


class DeployError(RuntimeError):
    """The application did not deploy; ``failures`` says why, replica by replica."""

    def __init__(self, summary: str, failures: list[StartFailure]):
        self.summary = summary
        self.failures = failures
        super().__init__("\n".join([summary, *(line for f in failures for line in f.lines())]))


def advice_for(text: str, model: str | None) -> str | None:
    for pattern, advice in HINTS:
        if re.search(pattern, text):
            return advice.replace("{model}", model or "<model>")
    return None


def exception_lines(text: str) -> list[str]:
    """Every line of ``text`` that states an exception (``Type: message``), log prefixes removed."""
    out: list[str] = []
    more = 0  # indented lines after an exception line continue its message (pydantic's do)
    for raw in text.splitlines():
        line = _PREFIX.sub("", raw.strip()).strip()
        if _EXCEPTION.match(line):
            out.append(line)
            more = 2
        elif more and raw[:1].isspace() and line and not line.startswith(_NOT_MESSAGE):
            out[-1] += " " + line
            more -= 1
        else:
            more = 0
    return out


def engine_error(text: str) -> str | None:
    """The exception that says why: the last one a hint knows, else the last one that is
    not a wrapper ("see root cause above"), else the last one at all."""
    found = exception_lines(text)
    causes = [line for line in found if not _WRAPPERS.search(line)]
    known = [line for line in causes if advice_for(line, None)]
    pick = (known or causes or found or [None])[-1]
    return _PYDANTIC_INPUT.sub("", pick)[:_MAX_ERROR_CHARS] if pick else None


def log_path_in(message: str) -> str | None:
    m = _LOG_PATH.search(message)
    return m.group(1) if m else None


def read_tail(path: str | None) -> str:
    """The end of a log file, or "" where this machine cannot read it (a replica elsewhere)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def diagnose(deployment: str, message: str, model: str | None = None) -> StartFailure:
    """One deployment's failure from Serve's status message (it carries the replica's
    exception; owc's engine start error names the log file)."""
    path = log_path_in(message)
    log = read_tail(path)
    error = engine_error(log) or engine_error(message) or _last_line(message)
    advice = advice_for(error, model) or advice_for(log or message, model)
    return StartFailure(deployment=deployment, model=model, error=error, log_path=path, advice=advice)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:_MAX_ERROR_CHARS] if lines else "(no error message)"


def failing(deployments: Mapping[str, Any], models: Mapping[str, str], *, retrying: bool = False) -> list[StartFailure]:
    """The deployments of a Serve application status (``ApplicationStatusOverview.deployments``)
    that failed to start; ``models`` maps deployment names to model names. ``retrying``: also
    those with a failed replica Serve is still retrying."""
    out = []
    for name, d in deployments.items():
        status = str(getattr(d.status, "value", d.status))
        message = d.message or ""
        if status in ("DEPLOY_FAILED", "UNHEALTHY") or (retrying and "failed to start" in message):
            out.append(diagnose(name, message, models.get(name)))
    return out


def model_names(names: Iterable[str]) -> dict[str, str]:
    """Deployment name -> model name, for owc's engine deployments."""
    from cluster.engine.names import deployment_name

    return {deployment_name(n): n for n in names}
