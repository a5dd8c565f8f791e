"""OpenTelemetry traces of the request path: a SERVER span per request (continuing the
caller's `traceparent` when sent) and a CLIENT span for the engine call, whose context
travels to the engine in `traceparent` (vLLM continues it when started with
`--otlp-traces-endpoint`). Exported over OTLP/HTTP only when an endpoint is configured;
otherwise no tracer exists and the request path pays nothing. OpenTelemetry itself (the
API's context entry-point scan, the SDK, the exporter's protobuf and requests) is imported
when a tracer is made: a gateway process that does not trace starts without it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cluster.config.schema import Tracing

if TYPE_CHECKING:
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SpanExporter


class RequestTracer:
    def __init__(self, cfg: Tracing, *, exporter: SpanExporter | None = None):
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
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
        parent = self._propagator.extract(carrier)
        return self._tracer.start_span(
            f"POST {route}", context=parent, kind=self._trace.SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": route},
        )

    def engine_span(self, parent: trace.Span, model: str) -> tuple[trace.Span, dict[str, str]]:
        """The engine call's span and the headers that carry its context to the engine."""
        span = self._tracer.start_span(
            "engine.generate", context=self._trace.set_span_in_context(parent), kind=self._trace.SpanKind.CLIENT,
            attributes={"gen_ai.request.model": model},
        )
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        return span, carrier

    @staticmethod
    def finish(span: trace.Span, status: int, attributes: Mapping[str, Any]) -> None:
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            from opentelemetry.trace import Status, StatusCode  # a span exists: OpenTelemetry is loaded

            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def shutdown(self) -> None:
        self._provider.shutdown()
