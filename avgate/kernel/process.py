"""Start-up shared by every process: settings check, logging, tracing, keys,
then the process's own composition, served until SIGTERM.

The production profile is checked here, once for every process: what the
settings alone show (local stand-ins, weak settings), and the role each of
the process's database URLs connects as, asked of PostgreSQL itself. One
role per process is what keeps each schema to its owner and the ledger's
triggers out of every service's reach; a superuser (or a role that may
become one, bypass row-level security, create roles or databases, or run
programs and files on the server) undoes it, and so does one URL shared by
every process, which connects as another process's role in all but one.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg

from avgate.kernel.db import libpq_url
from avgate.kernel.grpc.access import AccessTable
from avgate.kernel.grpc.auth import PrincipalInterceptor
from avgate.kernel.grpc.server import GrpcProcess, ServerOptions, ServiceRegistration
from avgate.kernel.keys import generate_key_pair, load_trusted_keys
from avgate.kernel.logging import configure_logging
from avgate.kernel.principal import TokenVerifier
from avgate.kernel.settings import DatabaseLogin, Environment, ProcessSettings, ProductionProfileError
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


# What a process's role must not have, nor any role it is a member of (attribute → what it allows).
ROLE_ATTRIBUTES = {
    "rolsuper": "is a superuser",
    "rolbypassrls": "bypasses row-level security",
    "rolcreaterole": "may create roles",
    "rolcreatedb": "may create databases",
}
# Predefined roles that reach the server's files and programs (a superuser's powers by another name).
SERVER_ROLES = ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files")

_ROLES_HELD = """
select r.rolname, r.rolname = current_user, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb
from pg_roles r
where pg_has_role(current_user, r.oid, 'MEMBER')
order by r.rolname = current_user desc, r.rolname
"""


class DatabaseUnreachable(RuntimeError):
    """The database could not be reached to check the role a process connects as (it may be starting)."""


def database_role_problems(login: DatabaseLogin, *, connect_timeout: int = 10, wait_seconds: float = 60.0) -> list[str]:
    """What production refuses in the role `login.url` connects as, asked of PostgreSQL: another role
    than `login.role`, or powers beyond its own schema; one line per URL, naming its variable.

    A database that does not answer is waited for (it may be starting with the pod) for
    `wait_seconds`; then DatabaseUnreachable: the process must not start with its role unchecked,
    and a down database is no configuration error, so it exits differently (EX_UNAVAILABLE)."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.5
    while True:
        try:
            with psycopg.connect(libpq_url(login.url), connect_timeout=connect_timeout, autocommit=True) as conn:
                rows = conn.execute(_ROLES_HELD).fetchall()
            break
        except psycopg.OperationalError as exc:
            if time.monotonic() + delay > deadline:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise DatabaseUnreachable(f"{login.variable}: cannot check the role it connects as ({reason})") from exc
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    current = next(row[0] for row in rows if row[1])
    refused = []
    if current != login.role:
        refused.append(f"is not {login.role}, this process's own role")
    for name, is_current, *flags in rows:
        held = [what for what, flag in zip(ROLE_ATTRIBUTES.values(), flags, strict=True) if flag]
        if name in SERVER_ROLES:
            held.append("reaches the server's files or programs")
        if held:
            refused.append(f"{'it' if is_current else f'its role {name}'} {', '.join(held)}")
        if is_current and flags[0]:
            break  # a superuser is a member of every role: the rest says nothing more
    if not refused:
        return []
    return [
        f"{login.variable} connects as {current}, which {'; '.join(refused)}: connect as {login.role}, made by "
        "`avgate db bootstrap`, with no other powers"
    ]


def check_production_profile(settings: ProcessSettings) -> None:
    """Refuses (ProductionProfileError) with AVGATE_ENV=production while any local stand-in, weak setting
    or database role production refuses is configured; the local profile is not looked at."""
    if settings.env is not Environment.PRODUCTION:
        return
    problems = settings.production_problems()
    for login in settings.database_logins():
        problems += database_role_problems(login)
    if problems:
        raise ProductionProfileError(settings.process_name, problems)


def prepare(settings_cls: type[S]) -> S:
    """Reads settings, refuses production with local stand-ins or weak settings, sets up logs, traces, keys."""
    settings = settings_cls()
    try:
        check_production_profile(settings)
    except ProductionProfileError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(78) from exc  # EX_CONFIG
    except DatabaseUnreachable as exc:
        print(f"{settings.process_name}: {exc}", file=sys.stderr)
        raise SystemExit(69) from exc  # EX_UNAVAILABLE: the orchestrator restarts it
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
