"""The capacity controller's settings for one model (cluster.capacity.policy reads them)."""

from __future__ import annotations

from pydantic import Field

from cluster.config.base import StrictModel


class Autoscaling(StrictModel):
    """The capacity controller's policy settings for one model (cluster.capacity.policy)."""

    enabled: bool = Field(False, description="Let `owc controller` drive this model's replica count within `replicas`.")
    target_ongoing_per_replica: float = Field(
        8.0, gt=0, description="Requests in flight per replica the policy sizes for (gateway in-flight + engine queue)."
    )
    target_queue_per_replica: float = Field(
        2.0, ge=0, description="Engine queue per replica above which the model scales up at once."
    )
    target_kv_usage: float = Field(0.9, gt=0, le=1, description="Mean KV-cache use above which it scales up.")
    ttft_slo_s: float = Field(2.0, gt=0, description="TTFT p95 objective; above it, scale up.")
    down_utilization: float = Field(
        0.6, gt=0, lt=1,
        description="Hysteresis: scale down only to replicas the load fits at this fraction of the target.",
    )
    up_cooldown_s: float = Field(30.0, ge=0, description="Least time between two scale-ups.")
    down_cooldown_s: float = Field(120.0, ge=0, description="Least time after any scaling before a scale-down.")
    down_stabilization_s: float = Field(
        300.0, ge=0, description="The load must have fitted fewer replicas this long without a break before a "
        "scale-down, which goes to the most replicas it needed in that time."
    )
    max_step_up: int = Field(4, ge=1, description="Most replicas added in one decision.")
    max_step_down: int = Field(
        1, ge=1, description="Most replicas removed in one decision (further steps follow down_cooldown_s apart)."
    )
    idle_to_zero_s: float | None = Field(
        None, gt=0,
        description="With replicas.min 0: no request for this long scales the model to zero (None: never).",
    )
    wake_timeout_s: float = Field(
        300.0, gt=0, description="Scaled to zero: how long the gateway holds a request while the first replica starts."
    )
    stale_after_s: float = Field(60.0, gt=0, description="Signals older than this count as missing: the policy holds.")
    drain_timeout_s: float = Field(
        600.0, gt=0, description="Scale-down: longest a leaving replica waits for its in-flight requests."
    )
    # Burst sizing (cluster.capacity.policy.burst_need): the replicas a burst needs, asked for at its start.
    replica_capacity_rps: float | None = Field(
        None, gt=0, description="Requests per second one replica sustains at a full batch, from the engine profile "
        "for the model's request mix (`owc simulate` fills it from its profile and trace). None: no burst sizing; "
        "only the in-flight, queue, KV and TTFT rules scale up.",
    )
    replica_startup_s: float = Field(
        0.0, ge=0, description="Seconds a new replica takes to serve (the engine profile's measured startup_s): how far "
        "ahead burst sizing extrapolates the arrival rate's rise.",
    )
    target_utilization: float = Field(
        0.8, gt=0, le=1, description="Burst sizing keeps each replica's share of the arrival rate at this fraction "
        "of `replica_capacity_rps`.",
    )
    standing_headroom: int = Field(
        0, ge=0, description="Replicas kept beyond those the load needs (burst sizing and scale-down alike): what "
        "absorbs a burst while new replicas start, paid for in replica-hours (this many times the hours served).",
    )
    batch_max_replicas: int = Field(
        0, ge=0, description="The batch backlog's own budget: while batch lines wait, the model may hold up to this "
        "many replicas for them (within replicas.max). The backlog never scales beyond it; 0: batch never scales.",
    )
