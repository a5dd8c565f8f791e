"""The gateway's settings: bind address, keys, request limits, tenants, access log, traces."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cluster.config.auth import JwtConfig, TenantConfig
from cluster.config.base import StrictModel
from cluster.config.routing import RoutingStats


class Limits(StrictModel):
    """What one client may hold or ask for. The connection bounds apply per gateway process,
    before any credential is read; the request caps are defaults a tenant may override."""

    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted (bytes); larger is 413.")
    request_timeout_s: float = Field(600.0, gt=0, description="Upper bound on one request's total time (seconds).")
    connect_timeout_s: float = Field(5.0, gt=0, description="Seconds to open a connection to an engine replica.")
    header_timeout_s: float = Field(
        10.0, gt=0, description="Seconds a client has to send a request's headers, from its connection (or its "
        "request's first byte); slower is 408 and the connection is closed.",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="Seconds a client has to send a request's body once its headers are in; slower is "
        "408 and the connection is closed.",
    )
    upload_timeout_s: float = Field(
        900.0, gt=0, description="Seconds a client has to send a file upload's body (POST /v1/files, up to "
        "batch.max_file_bytes: 200 MB in 900 s is ~0.23 MB/s) once its headers are in; other bodies have "
        "body_timeout_s. Slower is 408 and the connection is closed.",
    )
    keepalive_timeout_s: float = Field(
        75.0, gt=0, description="Seconds an idle keep-alive connection stays open (above the common 60 s idle "
        "timeout of load balancers in front, so they close first).",
    )
    max_header_bytes: int = Field(
        32 << 10, ge=1024, le=1 << 20, description="Largest request line plus headers (bytes); larger is 431 and "
        "the connection is closed.",
    )
    max_connections: int | None = Field(
        None, ge=1, description="Client connections one gateway process holds at once; None: half of the process's "
        "open-file limit (raised to its hard limit at start) less a reserve, since each request also holds an engine "
        "connection. At the bound the oldest idle connection is closed for a new one; with none idle the new one gets "
        "503 with Retry-After.",
    )
    auth_failures_per_minute: float = Field(
        60.0, gt=0, description="Failed authentications one client address may make per minute (sustained); beyond "
        "it its failed attempts get 429 with Retry-After. Valid credentials from the same address are never refused.",
    )
    auth_failures_burst: int = Field(20, ge=1, description="Failed authentications allowed at once above the rate.")
    max_n: int = Field(16, ge=1, le=128, description="Largest `n` (choices per request); tenants may override.")
    max_best_of: int = Field(16, ge=1, description="Largest `best_of` (completions); tenants may override.")
    max_prompts: int = Field(64, ge=1, description="Most prompts in one completions request's prompt list.")
    max_output_tokens: int = Field(
        32768, ge=1, description="Largest max_tokens / max_completion_tokens / max_output_tokens; tenants may override.",
    )


class AccessLog(StrictModel):
    enabled: bool = Field(True, description="Write one JSON line per finished request.")
    path: str | None = Field(None, description="File to append to; stdout when unset.")
    include_prompts: bool = Field(
        False, description="Also log the request's messages/prompt. Off by default: prompts may hold personal data."
    )


class Tracing(StrictModel):
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP traces endpoint (e.g. http://otel-collector:4318/v1/traces); no tracing when unset."
    )
    service_name: str = Field("owc-gateway", description="service.name resource attribute of the gateway's spans.")
    sample_ratio: float = Field(1.0, ge=0, le=1, description="Fraction of new traces sampled (parent decision wins).")


class StoreConfig(StrictModel):
    """The shared tenancy store: every gateway replica counts against the same limits."""

    url: str = Field(..., pattern=r"^rediss?://", description="Redis URL, `redis://HOST:PORT/DB` (a password as "
                     "`redis://:PASSWORD@HOST:PORT/DB`, or in the env var named by url_env).")
    url_env: str | None = Field(None, description="Environment variable whose value, when set, replaces url "
                                "(a Kubernetes Secret's).")
    on_failure: Literal["open", "closed", "local"] = Field(
        "local", description="When the store fails: `open` admits without limits, `closed` refuses with 429 "
        "tenancy_store_unavailable, `local` applies each gateway's share of every limit (the limit divided by the "
        "live gateway count) in process. The store is retried every second.",
    )
    timeout_s: float = Field(1.0, gt=0, le=5, description="Seconds one store call may take before it counts as failed.")
    lease_ttl_s: float = Field(30.0, ge=3, description="Seconds a concurrency slot outlives its gateway (renewed "
                               "every third of it while the request runs).")
    usage_retention_days: int = Field(400, ge=1, description="Days usage records are kept.")


class OutputAllowance(StrictModel):
    """Output tokens reserved for a request that sets no max_tokens, by reasoning effort."""

    default: int = Field(1024, ge=1, description="Without reasoning_effort (or an unlisted one).")
    by_effort: dict[str, int] = Field(
        default_factory=lambda: {"minimal": 1024, "low": 2048, "medium": 8192, "high": 32768},
        description="reasoning_effort (chat) / reasoning.effort (Responses) -> tokens reserved.",
    )


class FairSharing(StrictModel):
    """The gateway's own queue in front of each model's engines (cluster.gateway.flowcontrol.fair_queue)."""

    enabled: bool = Field(
        True, description="Hold requests beyond what the engines can run in the gateway and hand engine slots out by "
        "weighted fair queueing across tenants (tenant `priority` first, then `weight`); off: every request goes "
        "straight to an engine, whose own queue is first come, first served.",
    )
    dispatch_margin: int = Field(
        2, ge=0, le=1024, description="Requests sent to a replica beyond what it can run at once (its max_num_seqs, "
        "from engine_kwargs, else learned from its scraped running count while it had a queue): they wait in the "
        "engine's queue, so a freed slot is filled without a round trip.",
    )
    headroom: int = Field(
        2, ge=0, le=1024, description="Engine slots of a model (over its replicas) that a tenant at or over its fair "
        "share may not take while other tenants are active: a lighter tenant's request then finds a slot free instead "
        "of waiting for one to finish. A tenant's share counts the slots it holds less its credit: the part of its "
        "share it left unused on average over the last seconds, while active, when other tenants held more than "
        "theirs (a light tenant's burst is not held to its share while the flood has been taking it), or plus its debt "
        "(see credit_burst). With "
        "`preempt`, a request whose slot can be taken back (non-streamed) may take the headroom too: the lighter "
        "tenant then takes its slot back. A tenant alone has the whole model. Shares are of the slots the other "
        "gateways do not hold, and of the free slots beyond the headroom each gateway hands such a tenant only its "
        "part (its part of the model's load), so that gateways behind one balancer keep the headroom together.",
    )
    preempt: bool = Field(
        True, description="A tenant under its fair share (less its credit, see headroom) sent to a replica with no "
        "free running slot takes one back: "
        "the youngest request there of a tenant over its share or in debt (see credit_burst; of a priority no higher) "
        "that has not answered its "
        "client yet (non-streamed, or a stream before its first byte) is aborted and waits again at the head of its "
        "tenant's queue. Each request is taken back once at most; its engine work so far is lost.",
    )
    credit_window_s: float = Field(
        5.0, ge=0, le=600, description="Seconds over which each tenant's slots held are averaged for its credit (see "
        "headroom): a tenant that left part of its share unused on average, while active, when others held more "
        "than theirs may hold that much beyond its share. 0: no credit, a tenant is held to the share it holds now.",
    )
    credit_burst: float = Field(
        3.0, ge=1, le=20, description="How many times its credit (see credit_window_s) a tenant may hold beyond its "
        "share at once. The credit is an average over the window, and a light tenant spends it in bursts shorter "
        "than the window (its requests arriving close together): its unused share over the window pays for a burst "
        "of several times as many slots for a generation's length. Its requests take them back (preempt) from the "
        "tenants in debt, which held more than their shares on average while others left theirs unused: such a "
        "tenant counts as over its share (headroom, preempt) by this many times its part of the others' credits, even "
        "while it holds less than its share now. The burst still raises the tenant's average, which lowers its "
        "credit. 1: a tenant holds at most its average credit beyond its share at any time.",
    )
    active_window_s: float = Field(
        10.0, gt=0, description="A tenant that sent a request of the model within this many seconds is active: it "
        "counts in the fair shares of that model.",
    )
    max_wait_s: float = Field(
        30.0, gt=0, description="Longest a request waits in the gateway's queue; then 429 queue_full with Retry-After.",
    )
    max_queued_per_tenant: int = Field(
        1024, ge=1, description="Requests one tenant may have waiting per model and gateway process; beyond it 429 "
        "queue_full. One tenant's backlog never refuses another tenant's request.",
    )
    max_queued: int = Field(
        8192, ge=1, description="Requests waiting per model and gateway process in all; when full, the newest request "
        "of the tenant with the most waiting is refused (429 queue_full) to make room.",
    )
    share_across_gateways: bool = Field(
        True, description="While a model is saturated, the gateway processes share their per-tenant counts of its "
        "slots through a Redis (store_url, else gateway.store), so that shares and headroom hold across them; one "
        "store round trip per dispatch while saturated, none otherwise. The store down or slow: each process decides "
        "alone (owc_fair_share_store_up 0).",
    )
    store_url: str | None = Field(
        None, pattern=r"^rediss?://", description="Redis for the shared counts; unset: gateway.store's. `owc serve` "
        "starts a local redis-server for it when neither is set and there is more than one gateway process.",
    )
    store_timeout_s: float = Field(
        0.05, gt=0, le=1, description="Seconds one exchange with that store may take; slower counts as failed (then "
        "per process, the store retried after a second).",
    )
    notify_releases: bool = Field(
        True, description="With the shared counts: a process that releases a slot of a saturated model tells the "
        "others at once (Redis pub/sub on the same store), and one whose requests wait for a slot looks again then, "
        "not at its next poll (0.1 s). Off, or a store whose ACL denies pub/sub channels: releases are seen at the "
        "polls.",
    )


class GatewayReplicas(StrictModel):
    """Gateway processes (Ray Serve replicas of `owc-gateway`); an int means min = max = initial."""

    min: int = Field(2, ge=1, le=64, description="Fewest gateway processes kept running (2: a crashed one costs "
                     "clients a retried connection, not an outage).")
    max: int = Field(2, ge=1, le=64, description="Most gateway processes the capacity controller may run.")
    initial: int | None = Field(None, ge=1, le=64, description="Processes started with; defaults to `min`.")

    @model_validator(mode="before")
    @classmethod
    def _from_int(cls, v):
        if isinstance(v, int) and not isinstance(v, bool):
            return {"min": v, "max": v}
        if not isinstance(v, (dict, GatewayReplicas)):
            raise ValueError(f"expected an int (that many gateway processes) or {{min, max, initial}}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> GatewayReplicas:
        if self.min > self.max:
            raise ValueError(f"gateway.replicas.min ({self.min}) > gateway.replicas.max ({self.max})")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise ValueError("gateway.replicas.initial must lie within [min, max]")
        return self

    @property
    def start(self) -> int:
        return self.initial if self.initial is not None else self.min

    @property
    def autoscaled(self) -> bool:
        return self.max > self.min


class GatewayAutoscaling(StrictModel):
    """How the capacity controller sizes `owc-gateway` between gateway.replicas.min and max
    (only when max > min), from the gateways' own metrics: requests they work on (not the ones
    the fair queue holds: those wait for engines, not for gateways) and event-loop lag."""

    target_in_flight_per_replica: float = Field(
        256.0, gt=0, description="Requests in progress per gateway process the controller sizes for.",
    )
    max_loop_lag_s: float = Field(
        0.05, gt=0, description="Event-loop lag (worst gateway process) above which one more process is added at once.",
    )
    down_stabilization_s: float = Field(
        120.0, ge=0, description="Seconds the lower gateway count must be wanted without a break before a scale-down.",
    )
    up_cooldown_s: float = Field(30.0, ge=0, description="Seconds after a gateway scale-up before another.")
    down_cooldown_s: float = Field(120.0, ge=0, description="Seconds after a gateway scale-down before another.")
    drain_timeout_s: float = Field(
        600.0, gt=0, description="Longest a leaving gateway process keeps serving its open requests and streams "
        "(it takes no new connections meanwhile); on Kubernetes its pod's grace period covers it.",
    )


class GatewayConfig(StrictModel):
    host: str = Field("127.0.0.1", description="Address the gateway binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the OpenAI API.")
    replicas: GatewayReplicas = Field(
        default_factory=GatewayReplicas, description="Gateway processes sharing the port (SO_REUSEPORT): "
        "`{min, max, initial}`, or an int for a fixed count. With max > min the capacity controller sizes them.",
    )
    autoscaling: GatewayAutoscaling = Field(
        default_factory=GatewayAutoscaling, description="Gateway autoscaling (when replicas.max > replicas.min).",
    )
    api_keys_file: str | None = Field(
        None, description="YAML/JSON file mapping API key -> tenant name."
    )
    api_keys_env: str | None = Field(
        "OWC_API_KEYS",
        description="Environment variable holding `key=tenant,key2=tenant2`; merged with the file.",
    )
    admin_keys_file: str | None = Field(
        None, description="Keys file of the admin API (`sha256:<hex>: name`); the only keys admin routes accept.",
    )
    admin_keys_env: str | None = Field(
        "OWC_ADMIN_KEYS", description="Environment variable holding admin `key=name` pairs; merged with the file.",
    )
    keys_reload_s: float = Field(
        5.0, gt=0, description="Seconds between checks of the keys files (and the JWKS file) for changes; a changed "
        "file is reloaded without a restart (also on SIGHUP). A file that fails to load keeps the keys in force.",
    )
    jwt: JwtConfig | None = Field(None, description="Accept tenants from JWTs an upstream API gateway signs.")
    tenant_header: str | None = Field(
        None, description="Header naming the tenant, set by an upstream API gateway; accepted only from "
        "trusted_proxies addresses, ignored from any other.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list, description="Addresses or CIDRs of upstream gateways whose tenant_header is trusted.",
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535,
        description="Port of each gateway process's metrics-only server (/metrics); a free port per process when "
        "unset (local mode; `owc serve` refuses a fixed one with gateway.replicas above 1: the port is not shared). "
        "Not the API port: the API port serves no metrics.",
    )
    cpus: float = Field(0.5, gt=0, description="Logical Ray CPUs per gateway replica.")
    limits: Limits = Field(default_factory=Limits, description="Request limits.")
    ray_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each gateway replica needs (Kubernetes: pins gateways to their worker group).",
    )
    tenants: dict[str, TenantConfig] = Field(
        default_factory=dict,
        description="Per-tenant limits and allow-lists keyed by tenant name (tenants come from API keys, JWTs or the "
        "trusted header; `anonymous` without credentials).",
    )
    store: StoreConfig | None = Field(
        None, description="Shared tenancy store (Redis) for limits, quotas and usage; unset: each gateway process "
        "counts alone, in memory.",
    )
    output_allowance: dict[str, OutputAllowance] = Field(
        default_factory=lambda: {"*": OutputAllowance()},
        description="Per served model (`*`: any other) output tokens reserved when a request sets no max_tokens.",
    )
    access_log: AccessLog = Field(default_factory=AccessLog, description="Structured access log.")
    tracing: Tracing = Field(default_factory=Tracing, description="OpenTelemetry traces of the request path.")
    routing_stats: RoutingStats = Field(
        default_factory=RoutingStats, description="Engine stats feeding routing, scraped off the request path."
    )
    fair_sharing: FairSharing = Field(
        default_factory=FairSharing, description="Fair sharing of saturated engines across tenants (per gateway process)."
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"not an address or CIDR: {item!r}") from None
        return v

    @model_validator(mode="after")
    def _ports_differ(self) -> GatewayConfig:
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError("gateway.metrics_port must differ from gateway.port (the API port serves no metrics)")
        return self

    @property
    def local_host(self) -> str:
        """Where a client on this host reaches the gateway (a wildcard bind answers on loopback)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
