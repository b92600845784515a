"""Start-up shared by every process: settings check, logging, tracing, keys,
then the process's own composition, served until SIGTERM."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from avgate.kernel.grpc.access import AccessTable
from avgate.kernel.grpc.auth import PrincipalInterceptor
from avgate.kernel.grpc.server import GrpcProcess, ServerOptions, ServiceRegistration
from avgate.kernel.keys import generate_key_pair, load_trusted_keys
from avgate.kernel.logging import configure_logging
from avgate.kernel.principal import TokenVerifier
from avgate.kernel.settings import ProcessSettings, ProductionProfileError
from avgate.kernel.telemetry import configure_tracing
from avgate.kernel.tls import PeerProcessInterceptor, internal_tls_enabled, server_credentials

S = TypeVar("S", bound=ProcessSettings)


def server_options(settings: ProcessSettings) -> ServerOptions:
    return ServerOptions(
        host=settings.grpc_host,
        port=settings.grpc_port,
        metrics_host=settings.grpc_host,
        metrics_port=settings.metrics_port,
        max_message_bytes=settings.max_message_bytes,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        drain_delay_seconds=settings.drain_delay_seconds,
        credentials=server_credentials(settings),
        health_port=settings.effective_health_port,
    )


def token_verifier(settings: ProcessSettings) -> TokenVerifier:
    return TokenVerifier(audience=settings.process_name, trusted_keys=load_trusted_keys(settings.keys_dir))


def service_process(
    settings: ProcessSettings, registrations: list[ServiceRegistration], **kwargs: object
) -> GrpcProcess:
    """A service's server: every non-health call needs a principal token for this service; over mTLS,
    every call needs a peer certificate naming an avgate process."""
    return GrpcProcess(
        name=settings.process_name,
        registrations=registrations,
        options=server_options(settings),
        auth_interceptor=PrincipalInterceptor(token_verifier(settings), AccessTable.from_contracts()),
        peer_interceptor=PeerProcessInterceptor() if internal_tls_enabled(settings) else None,
        **kwargs,  # type: ignore[arg-type]
    )


def prepare(settings_cls: type[S]) -> S:
    """Reads settings, refuses production with local stand-ins, sets up logs, traces, keys."""
    settings = settings_cls()
    try:
        settings.check_production()
    except ProductionProfileError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(78) from exc  # EX_CONFIG
    configure_logging(settings.process_name, settings.log_level)
    configure_tracing(settings.process_name, settings.otel_exporter)
    if settings.generate_keys:
        generate_key_pair(settings.keys_dir, settings.process_name)
    return settings


def run(settings_cls: type[S], compose: Callable[[S], Awaitable[GrpcProcess]]) -> None:
    """The body of every `python -m <process>`."""
    settings = prepare(settings_cls)

    async def main() -> None:
        process = await compose(settings)
        await process.run_until_signalled()

    try:
        asyncio.run(main())
    except ProductionProfileError as exc:  # found while composing (the gateway's development keys)
        print(str(exc), file=sys.stderr)
        raise SystemExit(78) from exc
