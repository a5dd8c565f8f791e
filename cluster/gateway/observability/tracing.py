"""OpenTelemetry traces of the request path: a SERVER span per request (continuing the
caller's `traceparent` when sent) and a CLIENT span for the engine call, whose context
travels to the engine in `traceparent` (vLLM continues it when started with
`--otlp-traces-endpoint`). Exported over OTLP/HTTP only when an endpoint is configured;
otherwise no tracer exists and the request path pays nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from cluster.config.schema import Tracing

_PROPAGATOR = TraceContextTextMapPropagator()


class RequestTracer:
    def __init__(self, cfg: Tracing, *, exporter: SpanExporter | None = None):
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": cfg.service_name}),
            sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)),
        )
        self._provider.add_span_processor(
            BatchSpanProcessor(exporter or OTLPSpanExporter(endpoint=cfg.otlp_endpoint), schedule_delay_millis=500)
        )
        self._tracer = self._provider.get_tracer("owc.gateway")

    @classmethod
    def from_config(cls, cfg: Tracing) -> RequestTracer | None:
        return cls(cfg) if cfg.otlp_endpoint else None

    def server_span(self, route: str, headers: Mapping[bytes, bytes]) -> trace.Span:
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items() if k in (b"traceparent", b"tracestate")}
        parent = _PROPAGATOR.extract(carrier)
        return self._tracer.start_span(
            f"POST {route}", context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": route},
        )

    def engine_span(self, parent: trace.Span, model: str) -> tuple[trace.Span, dict[str, str]]:
        """The engine call's span and the headers that carry its context to the engine."""
        span = self._tracer.start_span(
            "engine.generate", context=trace.set_span_in_context(parent), kind=SpanKind.CLIENT,
            attributes={"gen_ai.request.model": model},
        )
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        return span, carrier

    @staticmethod
    def finish(span: trace.Span, status: int, attributes: Mapping[str, Any]) -> None:
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def shutdown(self) -> None:
        self._provider.shutdown()
