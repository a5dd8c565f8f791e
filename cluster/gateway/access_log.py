"""Structured access log: one JSON line per finished request. The prompt is never logged
unless `gateway.access_log.include_prompts` is set (prompts may hold personal data)."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from typing import IO, Any

import orjson

from cluster.config.schema import AccessLog as AccessLogConfig


class AccessLog:
    def __init__(self, cfg: AccessLogConfig, *, stream: IO[bytes] | None = None, clock=time.time):
        self.include_prompts = cfg.include_prompts
        self._clock = clock
        if stream is not None:
            self._out = stream
        elif cfg.path:
            self._out = open(cfg.path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the process
        else:
            self._out = sys.stdout.buffer

    def write(self, record: dict[str, Any]) -> None:
        ts = datetime.fromtimestamp(self._clock(), tz=timezone.utc).isoformat(timespec="milliseconds")
        line = orjson.dumps({"ts": ts, **record}, option=orjson.OPT_APPEND_NEWLINE)
        try:
            self._out.write(line)
            self._out.flush()
        except (OSError, ValueError):  # a closed or full log must not fail the request
            pass


def prompt_of(data: dict[str, Any]) -> Any:
    """The part of a request body that is the user's text."""
    if "messages" in data:
        return data["messages"]
    return data.get("prompt")
