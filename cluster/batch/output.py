"""A batch's results on disk and its output files. Each line's result is written by the runner
that ran it to `<store_dir>/work/<batch id>/<line>.<owner>` (atomically, before the ledger marks
the line done), so the output is assembled from the ledger's winners only: one output line per
custom_id even when a line whose lease expired ran twice. The lines are OpenAI's batch output
objects: ``{id, custom_id, response: {status_code, request_id, body}, error}``; a line that never
ran (the window closed) gets ``response: null`` and an ``error``."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from cluster.batch.ids import is_batch_id

log = logging.getLogger(__name__)
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def request_id() -> str:
    return "batch_req_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def answered(custom_id: str, status: int, request_id_: str, body: Any) -> bytes:
    """The output line of a line the gateway answered (any status)."""
    return orjson.dumps({"id": request_id(), "custom_id": custom_id,
                         "response": {"status_code": status, "request_id": request_id_, "body": body},
                         "error": None}, option=orjson.OPT_APPEND_NEWLINE)


def unanswered(custom_id: str, code: str, message: str) -> bytes:
    """The error line of a line that never ran."""
    return orjson.dumps({"id": request_id(), "custom_id": custom_id, "response": None,
                         "error": {"code": code, "message": message}}, option=orjson.OPT_APPEND_NEWLINE)


class UsageSum:
    """OpenAI's Batch ``usage``: the tokens of every answered line summed (a Chat Completions or
    Completions body's prompt/completion tokens, a Responses body's input/output tokens)."""

    def __init__(self):
        self.input = self.cached = self.output = self.reasoning = 0

    def add(self, line: bytes) -> None:
        try:
            response = orjson.loads(line).get("response") or {}
            usage = (response.get("body") or {}).get("usage")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if not isinstance(usage, dict):
            return
        chat = "input_tokens" not in usage
        self.input += _count(usage.get("prompt_tokens" if chat else "input_tokens"))
        self.output += _count(usage.get("completion_tokens" if chat else "output_tokens"))
        self.cached += _count(_get(usage, "prompt_tokens_details" if chat else "input_tokens_details", "cached_tokens"))
        self.reasoning += _count(_get(usage, "completion_tokens_details" if chat else "output_tokens_details",
                                      "reasoning_tokens"))

    def openai(self) -> dict[str, Any]:
        return {"input_tokens": self.input, "input_tokens_details": {"cached_tokens": self.cached},
                "output_tokens": self.output, "output_tokens_details": {"reasoning_tokens": self.reasoning},
                "total_tokens": self.input + self.output}


def _get(d: dict, key: str, inner: str) -> Any:
    v = d.get(key)
    return v.get(inner) if isinstance(v, dict) else None


def _count(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def input_offsets(path: Path) -> list[int]:
    """Where each request line (blank lines skipped, as the upload check counts them) starts."""
    out, at = [], 0
    with path.open("rb") as f:
        for raw in f:
            if raw.strip():
                out.append(at)
            at += len(raw)
    return out


def read_line(path: Path, offset: int) -> dict[str, Any]:
    with path.open("rb") as f:
        f.seek(offset)
        return orjson.loads(f.readline())


class Results:
    """The per-line results of running batches under ``root`` (the store directory)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def _dir(self, batch_id: str) -> Path:
        if not is_batch_id(batch_id):
            raise ValueError(f"not an owc batch id: {batch_id!r}")
        d = self.root / "work" / batch_id
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return d

    def write(self, batch_id: str, line: int, owner: str, data: bytes) -> None:
        d = self._dir(batch_id)
        tmp = d / f".{line}.{owner}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, d / f"{line}.{owner}")

    def read(self, batch_id: str, line: int, owner: str) -> bytes | None:
        try:
            return (self._dir(batch_id) / f"{line}.{owner}").read_bytes()
        except FileNotFoundError:
            return None

    def keep_input(self, batch_id: str, source: Path) -> None:
        """The batch's own link to its input file's content (made once, when it starts): deleting
        the file (DELETE /v1/files) does not take the lines of a running batch away. Raises
        FileNotFoundError when the input is gone already."""
        try:
            os.link(source, self._dir(batch_id) / "input")
        except FileExistsError:  # another process started it
            pass
        except FileNotFoundError:
            raise
        except OSError as e:  # a filesystem without hard links: the lines are read from the file itself
            if not source.exists():
                raise FileNotFoundError(source) from e
            log.warning("batch %s: no link to its input (%s); a delete of the file will stop its lines", batch_id, e)

    def input_of(self, batch_id: str) -> Path:
        return self.root / "work" / batch_id / "input"

    def remove(self, batch_id: str) -> None:
        shutil.rmtree(self.root / "work" / batch_id, ignore_errors=True) if is_batch_id(batch_id) else None


def assemble(results: Results, batch_id: str, done: dict[int, tuple[str, str]], *, total: int,
             missing: tuple[str, str] | None, custom_ids: Iterator[str]) -> Iterator[tuple[bool, bytes]]:
    """(is an error line, the line) in input order: each done line's winning result; a line not
    done gets ``missing`` (code, message) in the error file, or nothing when ``missing`` is None."""
    for line, cid in zip(range(total), custom_ids):
        got = done.get(line)
        data = results.read(batch_id, line, got[1]) if got else None
        if data is not None:
            yield got[0] != "ok", data
        elif missing is not None:
            yield True, unanswered(cid, *missing)
