"""Settling a finished request: its metrics, access-log line and tracing span, from what
admission knew (route, tenant, model, final status) and what the forwarder delivered."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster.gateway.observability.access_log import AccessLog, prompt_of
from cluster.gateway.observability.children import Children, add, observe, observe_all
from cluster.gateway.context import Delivery
from cluster.gateway.observability.metrics import GatewayMetrics
from cluster.gateway.context import RESPONSES
from cluster.gateway.observability.tracing import RequestTracer
from cluster.routing.router import Routing

UNKNOWN = "unknown"  # model or tenant not (yet) known when the request ended


def _prompt(route: str, data: dict[str, Any]) -> Any:
    """The user's text: a Responses request's instructions and input (its `prompt` is a
    stored template's reference), else the messages or prompt."""
    if route == RESPONSES:
        return {k: data[k] for k in ("instructions", "input") if k in data}
    return prompt_of(data)


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__
class Settled:
    """One request as it ended."""

    request_id: str
    route: str
    status: int
    tenant: str = UNKNOWN
    model: str = UNKNOWN
    adapter: str | None = None  # the LoRA adapter the request named (model is its base model)
    stream: bool = False
    data: dict[str, Any] | None = None  # the parsed body, when it got that far
    span: Any = None
    batch: tuple[str, str] | None = None  # a batch line: (batch id, custom_id)
    # A mirror mode copy (cluster.gateway.rollout.mirror): counted under its version in the request,
    # TTFT, ITL and token metrics the rollout's gates read; not in the duration histogram (no version
    # label: it is the clients'), the access log or a trace.
    mirror: bool = False


class Accounting:
    def __init__(self, *, metrics: GatewayMetrics, routing: Routing, access_log: AccessLog | None = None,
                 interactive_ttft: Callable[[str, float], None] | None = None):
        """``interactive_ttft(model, seconds)``: told each interactive request's time to first
        token (the batch lines' pacer, cluster.gateway.flowcontrol.batch_pacer)."""
        self._metrics = metrics
        self._interactive_ttft = interactive_ttft
        self._routing = routing
        self._access_log = access_log
        self._child = Children()

    def settle(self, req: Settled, delivery: Delivery) -> None:
        m, child = self._metrics, self._child
        latency = time.perf_counter() - delivery.started
        model, version = req.model, delivery.version or "stable"
        # A batch line is counted in owc_batch_lines_total (cluster.batch.runner), not as an
        # interactive request: the request rate, TTFT and ITL are what the capacity controller
        # scales on and a rollout's gates compare, and a backlog must move neither.
        interactive = req.batch is None
        if interactive:
            add(child(m.requests, model, req.tenant, req.route, str(req.status), version))
        if model != UNKNOWN and interactive and not req.mirror:
            observe(child(m.duration, model, req.route), latency)
        if delivery.decisions:
            policy = self._routing.policy(model)
            add(child(m.decisions, model, policy), len(delivery.decisions))
            observe_all(child(m.decision_seconds, policy), delivery.decisions)
            for plugin, seconds in delivery.plugin_timings:
                observe(child(m.plugin_seconds, plugin), seconds)
        for reason in delivery.retry_reasons:
            m.retries.labels(model, reason).inc()
        if delivery.ttft_s is not None and interactive:
            observe(child(m.ttft, model, version), delivery.ttft_s)
            if self._interactive_ttft is not None and not req.mirror:  # a copy's TTFT is no client's
                self._interactive_ttft(model, delivery.ttft_s)
        if delivery.itl and interactive:
            observe_all(child(m.itl, model, version), delivery.itl)
        if delivery.prompt_tokens:
            add(child(m.prompt_tokens, model, req.tenant, version), delivery.prompt_tokens)
        if delivery.completion_tokens:
            add(child(m.completion_tokens, model, req.tenant, version), delivery.completion_tokens)
        if delivery.reasoning_tokens:
            m.reasoning_tokens.labels(model, req.tenant, version).inc(delivery.reasoning_tokens)
        if req.span is not None:
            RequestTracer.finish(req.span, req.status, {
                "owc.request_id": req.request_id, "owc.tenant": req.tenant, "gen_ai.request.model": model,
                "gen_ai.usage.input_tokens": delivery.prompt_tokens,
                "gen_ai.usage.output_tokens": delivery.completion_tokens,
                "owc.usage.reasoning_tokens": delivery.reasoning_tokens,
            })
        if self._access_log is not None and not req.mirror:
            self._access_log.write(self._log_record(req, delivery, latency))

    def _log_record(self, req: Settled, delivery: Delivery, latency: float) -> dict[str, Any]:
        record = {
            "request_id": req.request_id, "tenant": req.tenant, "model": req.model, "adapter": req.adapter,
            "route": req.route,
            "status": req.status, "stream": req.stream, "prompt_tokens": delivery.prompt_tokens,
            "completion_tokens": delivery.completion_tokens, "reasoning_tokens": delivery.reasoning_tokens,
            "latency_s": round(latency, 6),
            "ttft_s": None if delivery.ttft_s is None else round(delivery.ttft_s, 6),
            "replica": delivery.endpoint.replica_id if delivery.endpoint else None, "retries": delivery.retries,
            "resumes": delivery.resumes,
        }
        if req.batch is not None:  # a batch line: its usage is batch usage
            record["batch_id"], record["custom_id"] = req.batch
        if self._access_log is not None and self._access_log.include_prompts and req.data is not None:
            record["prompt"] = _prompt(req.route, req.data)
        return record
