"""File and batch records as the store keeps them (JSON) and as OpenAI's API shows them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import orjson

from cluster.batch.lines import InputSummary


@dataclass(frozen=True)
class FileRecord:
    id: str
    tenant: str
    bytes: int
    created: float  # seconds since the epoch (the list order); created_at is its whole seconds
    expires_at: int
    filename: str  # the client's name, shown back only: never a path
    purpose: str
    lines: int = 0  # request lines of a batch input file
    urls: dict[str, int] = field(default_factory=dict)  # url -> first line naming it
    model: str | None = None  # the model every line names, if one

    @property
    def created_at(self) -> int:
        return int(self.created)

    @property
    def summary(self) -> InputSummary | None:
        return InputSummary(self.lines, self.urls, self.model) if self.purpose == "batch" and self.lines else None

    def openai(self) -> dict[str, Any]:
        """OpenAI's File object."""
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
                "expires_at": self.expires_at, "filename": self.filename, "purpose": self.purpose,
                "status": "processed", "status_details": None}

    def dumps(self) -> bytes:
        return dump(self)

    @classmethod
    def loads(cls, raw: bytes | str) -> FileRecord:
        return cls(**known(cls, orjson.loads(raw)))


STAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
          "cancelled_at")


@dataclass(frozen=True)
class BatchRecord:
    id: str
    tenant: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created: float
    expires_at: int
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None  # OpenAI's BatchError objects (code, message, param, line)
    metadata: dict[str, str] | None = None
    output_expires_s: int | None = None  # output_expires_after.seconds (None: batch.file_expiry_s)
    model: str | None = None  # the model every line of its input names (OpenAI's Batch `model`), else None
    usage: dict[str, Any] | None = None  # OpenAI's batch usage, the answered lines' tokens summed at the close
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None

    @property
    def created_at(self) -> int:
        return int(self.created)

    def openai(self) -> dict[str, Any]:
        """OpenAI's Batch object."""
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id, "completion_window": self.completion_window, "status": self.status,
            "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": self.created_at, "expires_at": self.expires_at,
            **{s: getattr(self, s) for s in STAMPS},
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
            # Set only once known (the spec's types are a string and an object, neither nullable):
            # the model when every line names one, the usage once the batch closed.
            **({"model": self.model} if self.model is not None else {}),
            **({"usage": self.usage} if self.usage is not None else {}),
        }

    def dumps(self) -> bytes:
        return dump(self)

    @classmethod
    def loads(cls, raw: bytes | str) -> BatchRecord:
        return cls(**known(cls, orjson.loads(raw)))


# Fields added after records were first stored: written only when set, so that a record without
# them is read by a gateway process of the version before (a rolling upgrade), as it always was.
LATER = ("model", "usage")


def dump(record: Any) -> bytes:
    d = dataclasses.asdict(record)
    for name in LATER:
        if d.get(name, 0) is None:
            del d[name]
    return orjson.dumps(d)


def known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """A stored record's fields this version knows: during a rolling upgrade an older gateway
    process reads the records a newer one wrote (a field added later, e.g. ``usage``) instead
    of failing on them."""
    names = {f.name for f in dataclasses.fields(cls)}
    return data if names.issuperset(data) else {k: v for k, v in data.items() if k in names}
