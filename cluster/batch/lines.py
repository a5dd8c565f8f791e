"""Input checks, pure: a batch input file's JSONL lines (`{custom_id, method: "POST", url, body}`,
each custom_id once, at most max_lines, urls among the endpoints owc runs) and a create-batch
request's fields. Each refusal is a 400 naming the line. Bodies are not checked here: a line whose
body the engine or admission refuses will go to the batch's error file when it runs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from cluster.batch.errors import BatchApiError, invalid

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
COMPLETION_WINDOWS = ("24h",)
LINE_KEYS = frozenset({"custom_id", "method", "url", "body"})
CREATE_KEYS = ("input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after")
MAX_CUSTOM_ID = 512
MAX_METADATA = 16  # OpenAI's metadata: 16 pairs, keys <= 64 characters, values <= 512
EXPIRY_S = (3600, 2592000)  # expires_after.seconds' bounds (1 hour .. 30 days)


@dataclass(frozen=True)
class InputSummary:
    """What batch creation needs to know of a checked input file without reading it again."""

    lines: int
    urls: Mapping[str, int]  # url -> the first line (1-based) that names it
    model: str | None = None  # the model every line names (the Batch object's `model`); None: several or none


def bad_line(n: int, what: str) -> BatchApiError:
    return invalid(f"line {n}: {what}", param="file", code="invalid_batch_input")


def check_line(n: int, raw: bytes) -> dict[str, Any]:
    """One input line (``n``: 1-based), parsed; a 400 when it is not a request line."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        if raw.startswith(b"\xef\xbb\xbf"):  # Windows tools write one (PowerShell 5's `Out-File -Encoding utf8`)
            raise bad_line(n, "starts with a UTF-8 byte order mark (EF BB BF): save the file as UTF-8 without "
                              "a BOM") from None
        raise bad_line(n, "not valid JSON (each line of a batch file is one JSON object)") from None
    if not isinstance(obj, dict):
        raise bad_line(n, "not a JSON object")
    if missing := sorted(LINE_KEYS - obj.keys()):
        raise bad_line(n, f"missing {', '.join(missing)}")
    if unknown := sorted(obj.keys() - LINE_KEYS):
        raise bad_line(n, f"unknown field(s) {', '.join(unknown)}")
    cid = obj["custom_id"]
    if not isinstance(cid, str) or not cid or len(cid) > MAX_CUSTOM_ID:
        raise bad_line(n, f"custom_id must be a non-empty string of at most {MAX_CUSTOM_ID} characters")
    if obj["method"] != "POST":
        raise bad_line(n, "method must be \"POST\"")
    if obj["url"] not in ENDPOINTS:
        raise bad_line(n, f"url must be one of {', '.join(ENDPOINTS)}")
    if not isinstance(obj["body"], dict):
        raise bad_line(n, "body must be a JSON object")
    return obj


def check_input(lines: Iterable[bytes], *, max_lines: int) -> InputSummary:
    """Every line of an input file (blank lines skipped, as vLLM's run-batch does)."""
    seen: dict[str, int] = {}
    urls: dict[str, int] = {}
    models: set[object] = set()
    count = 0
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        obj = check_line(n, raw)
        count += 1
        if count > max_lines:
            raise invalid(f"the file has more than {max_lines} request lines", param="file",
                          code="invalid_batch_input")
        cid = obj["custom_id"]
        if cid in seen:
            raise bad_line(n, f"custom_id {cid!r} repeats line {seen[cid]} (each custom_id once per file)")
        seen[cid] = n
        urls.setdefault(obj["url"], n)
        if len(models) < 2:
            model = obj["body"].get("model") if isinstance(obj["body"], dict) else None
            models.add(model if isinstance(model, str) else None)  # any other (a list) fails on its own at run time
    if count == 0:
        raise invalid("the file holds no request lines", param="file", code="invalid_batch_input")
    (model,) = models if len(models) == 1 else (None,)
    return InputSummary(count, urls, model)


@dataclass(frozen=True)
class BatchRequest:
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    output_expires_s: int | None = None  # output_expires_after.seconds: the output and error files' lifetime


def check_create(body: Any) -> BatchRequest:
    """A POST /v1/batches body (OpenAI's CreateBatchRequest, the endpoints owc runs)."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    for name in body:  # a misspelt field (`metdata`, `completion-window`) is refused, never silently dropped
        if name not in CREATE_KEYS:
            raise invalid(f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter")
    for name in ("input_file_id", "endpoint", "completion_window"):
        if name not in body:
            raise invalid(f"missing required parameter: {name!r}", param=name, code="missing_required_parameter")
        if not isinstance(body[name], str):
            raise invalid(f"{name} must be a string", param=name)
    if body["endpoint"] not in ENDPOINTS:
        raise invalid(f"endpoint {body['endpoint']!r} is not supported; one of {', '.join(ENDPOINTS)}",
                      param="endpoint", code="unsupported_value")
    if body["completion_window"] not in COMPLETION_WINDOWS:
        raise invalid("completion_window must be \"24h\"", param="completion_window", code="unsupported_value")
    return BatchRequest(body["input_file_id"], body["endpoint"], body["completion_window"],
                        check_metadata(body.get("metadata")), check_output_expiry(body.get("output_expires_after")))


def check_output_expiry(v: Any) -> int | None:
    """OpenAI's ``output_expires_after`` ({anchor: "created_at", seconds: 3600 .. 2592000}, anchored
    at the output file's creation): its seconds; None when not given."""
    if v is None:
        return None
    name = "output_expires_after"
    if not isinstance(v, dict):
        raise invalid(f"{name} must be an object with anchor and seconds", param=name)
    for key in v:
        if key not in ("anchor", "seconds"):
            raise invalid(f"{name}: unknown parameter {key!r}", param=f"{name}.{key}", code="unknown_parameter")
    for key in ("anchor", "seconds"):
        if key not in v:
            raise invalid(f"missing required parameter: '{name}.{key}'", param=f"{name}.{key}",
                          code="missing_required_parameter")
    if v["anchor"] != "created_at":
        raise invalid(f"{name}.anchor must be \"created_at\"", param=f"{name}.anchor", code="unsupported_value")
    seconds = v["seconds"]
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not EXPIRY_S[0] <= seconds <= EXPIRY_S[1]:
        raise invalid(f"{name}.seconds must be an integer within {EXPIRY_S[0]} and {EXPIRY_S[1]}",
                      param=f"{name}.seconds")
    return seconds


def check_metadata(v: Any) -> dict[str, str] | None:
    if v is None:
        return None
    if not isinstance(v, dict) or len(v) > MAX_METADATA:
        raise invalid(f"metadata must be an object of at most {MAX_METADATA} pairs", param="metadata")
    for k, val in v.items():
        if len(k) > 64 or not isinstance(val, str) or len(val) > 512:
            raise invalid("metadata keys are at most 64 characters and values strings of at most 512",
                          param="metadata")
    return dict(v)


def check_file_for_batch(summary: InputSummary | None, endpoint: str) -> None:
    """The input file's lines all name the batch's endpoint."""
    if summary is None:
        raise invalid("the input file was not uploaded with purpose \"batch\"", param="input_file_id")
    for url, line in sorted(summary.urls.items(), key=lambda x: x[1]):
        if url != endpoint:
            raise bad_line(line, f"url {url!r} differs from the batch's endpoint {endpoint!r}")


def expiry_seconds(anchor: Any, seconds: Any) -> int | None:
    """An upload's ``expires_after`` (anchor `created_at`, 3600 .. 2592000 s); None when not given."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise invalid("expires_after[anchor] must be \"created_at\"", param="expires_after[anchor]")
    try:
        s = int(seconds)
    except (TypeError, ValueError):
        raise invalid("expires_after[seconds] must be an integer", param="expires_after[seconds]") from None
    if not EXPIRY_S[0] <= s <= EXPIRY_S[1]:
        raise invalid(f"expires_after[seconds] must lie within {EXPIRY_S[0]} and {EXPIRY_S[1]}",
                      param="expires_after[seconds]")
    return s
