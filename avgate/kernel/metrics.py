"""Prometheus metrics: per-method request counts and latencies, scraped over
HTTP from every process. Later issues add their gauges to the same registry
(outbox lag, dead letters, sequencer lag, Triton health)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server


class GrpcMetrics:
    """Server-side RPC metrics named as go-grpc-prometheus names them."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            ["grpc_service", "grpc_method"],
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "Time to handle an RPC, by method.",
            ["grpc_service", "grpc_method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )


class MetricsEndpoint:
    """The /metrics HTTP endpoint of one process."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int):
        self._server = None
        self.port = 0
        if port >= 0:  # negative: off
            self._server, _thread = start_http_server(port, addr=host, registry=registry)
            self.port = int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
