"""Per-call tracing span (W3C context from metadata) and Prometheus metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from avgate.kernel.grpc.wrapping import ScopedInterceptor
from avgate.kernel.metrics import GrpcMetrics
from avgate.kernel.telemetry import extract_context

_tracer = trace.get_tracer("avgate.grpc")


def split_method(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


class ObservabilityInterceptor(ScopedInterceptor):
    def __init__(self, metrics: GrpcMetrics):
        self._metrics = metrics

    @asynccontextmanager
    async def scope(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        service, name = split_method(method)
        self._metrics.started.labels(service, name).inc()
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        parent = extract_context(context.invocation_metadata())
        with _tracer.start_as_current_span(
            method.lstrip("/"),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except BaseException:
                code = grpc.StatusCode.CANCELLED if context.cancelled() else grpc.StatusCode.UNKNOWN
                raise
            finally:
                if isinstance(code, int):
                    code = grpc.StatusCode.UNKNOWN
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code is not grpc.StatusCode.OK:
                    span.set_status(Status(StatusCode.ERROR, code.name))
                self._metrics.handled.labels(service, name, code.name).inc()
                self._metrics.latency.labels(service, name).observe(time.perf_counter() - start)
