"""OpenTelemetry tracing: provider set-up and W3C context across gRPC hops.

The exporter is configurable (AVGATE_OTEL_EXPORTER: none, console, otlp) and
off by default. Context crosses hops as W3C `traceparent` metadata: the
server wrapper (avgate.kernel.grpc.observability) extracts it, outgoing calls
inject it with `outgoing_trace_metadata()`. We do this ourselves rather than
through opentelemetry-instrumentation-grpc because its aio server
interceptor breaks streaming calls (opentelemetry-python-contrib#3066), and
avgate streams uploads, feeds and the gateway's pass-through.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

_configured = False


def configure_tracing(process: str, exporter: str) -> None:
    """Installs the tracer provider once per process (after any fork)."""
    global _configured
    if _configured:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"avgate-{process}"}))
    span_exporter: SpanExporter | None = None
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _configured = True


def extract_context(metadata: Sequence[tuple[str, str | bytes]] | None):  # type: ignore[no-untyped-def]
    carrier = {k: v for k, v in (metadata or ()) if isinstance(v, str)}
    return propagate.extract(carrier)


def outgoing_trace_metadata() -> list[tuple[str, str]]:
    """W3C trace context of the current span, as gRPC metadata."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())
