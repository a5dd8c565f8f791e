"""The Batch API's settings (`batch:`): where files live, their bounds and expiry, the store of
file and batch records. OpenAI's own limits are the defaults."""

from __future__ import annotations

from pydantic import Field

from cluster.config.base import StrictModel

DAY_S = 86400


class BatchConfig(StrictModel):
    enabled: bool = Field(
        True, description="Serve the Files and Batches routes (`/v1/files`, `/v1/batches`); off: they answer 404.",
    )
    store_dir: str = Field(
        "~/.local/share/owc/batch",
        description="Directory of the uploaded files' contents, each named by owc's file id (never by the client's "
        "filename). Every gateway process must see the same directory: local mode shares the host's; on Kubernetes a "
        "ReadWriteMany volume mounted on every gateway pod. Locally the Redis `owc serve` starts keeps its data in its "
        "`redis/` subdirectory (the records outlive a restart), and `owc serve` its rollouts' state in `rollouts/`.",
    )
    store_url: str | None = Field(
        None, pattern=r"^rediss?://",
        description="Redis holding the file and batch records, shared by every gateway process; unset: gateway.store's, "
        "else gateway.fair_sharing.store_url (the one `owc serve` starts), else each gateway process keeps its own "
        "records in memory (lost at restart, and a second process does not see them).",
    )
    store_timeout_s: float = Field(
        2.0, gt=0, le=30, description="Seconds one call to that Redis may take; slower answers 503 with Retry-After.",
    )
    max_file_bytes: int = Field(
        200 * 1024 * 1024, ge=1024, description="Largest uploaded file in bytes (OpenAI's 200 MB); larger is 413.",
    )
    max_lines: int = Field(50_000, ge=1, description="Most request lines in one batch input file (OpenAI's 50,000).")
    max_tenant_bytes: int = Field(
        10 * 1024 ** 3, ge=1024,
        description="Bytes of files one tenant may hold at once (uploads beyond it are refused with 400 "
        "storage_limit_exceeded until files are deleted or expire).",
    )
    file_expiry_s: int = Field(
        30 * DAY_S, ge=3600, le=30 * DAY_S,
        description="Seconds after upload a file expires when its upload sets no `expires_after` (OpenAI's 30 days "
        "for batch files); an expired file is deleted from disk and store.",
    )
    sweep_period_s: float = Field(
        60.0, gt=0, description="Seconds between sweeps that delete expired files and expire overdue batches.",
    )
    run: bool = Field(
        True,
        description="Run batches in this gateway process: every process with it on takes lines of every tenant's "
        "batches through the store's leases (off: batches stay validating here, another process may run them).",
    )
    lines_in_flight: int = Field(
        16, ge=1, le=1024,
        description="Batch lines one gateway process holds at once (leased, waiting for an idle engine slot or "
        "running); engine slots are taken only when interactive traffic leaves them idle.",
    )
    lines_on_unknown_capacity: int = Field(
        2, ge=1, le=64,
        description="While a replica's capacity is not known yet (no max_num_seqs configured, none learned from its "
        "scrapes), batch lines this gateway process runs at once on the model.",
    )
    keep_free: float = Field(
        0.25, ge=0, lt=1,
        description="Share of a model's running slots (over its replicas, every gateway process's requests counted) "
        "that batch lines leave free for interactive arrivals, or gateway.fair_sharing.headroom slots if more (at "
        "least one): a batch line takes a slot only while more than that is free and no interactive request waits.",
    )
    ttft_tolerance: float | None = Field(
        0.2, ge=0, le=10,
        description="Batch lines back off while the interactive requests' TTFT (p90 of a pace_window_s window, "
        "measured by the same gateway process) is above (1 + this) x its figure in windows without batch lines: "
        "the lines one process may run on the model halve, and grow by one per window within it (on engines where "
        "each running sequence slows every step, free slots are not free capacity). null: free slots only.",
    )
    pace_window_s: float = Field(
        2.0, ge=0.1, le=60, description="Seconds of one window of that comparison.",
    )
    lease_ttl_s: float = Field(
        30.0, gt=1, le=3600,
        description="Seconds a line stays leased to a gateway process without renewal; a process that died has its "
        "lines taken by another after this long (renewed every poll while the line runs).",
    )
    poll_period_s: float = Field(
        1.0, gt=0, le=60, description="Seconds between a runner's looks at the store for batch work.",
    )
