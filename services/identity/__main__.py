"""Composition root of the identity process: settings → engine → store →
service → servicer; background jobs: the dispatcher of its outbox (incidents
handed to reporting), the expiry of enforcement actions and the re-index after a
blind-index key rotation, and housekeeping of finished codes and idle limits."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from avgate.kernel.db import create_engine_for
from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.process import run, service_process
from avgate.kernel.reporting_handoff import incident_handoff
from services.identity import wiring
from services.identity.config import IdentitySettings
from services.identity.expiry import EnforcementExpiry
from services.identity.housekeeping import Housekeeping
from services.identity.models import SCHEMA
from services.identity.reindex import IndexRotation
from services.identity.server import IdentityServicer, registrations
from services.identity.service import IdentityService
from services.identity.store import SqlIdentityStore
from services.identity.verification.service import VerificationService
from services.identity.verification.store import SqlVerificationStore


def _now() -> datetime:
    return datetime.now(UTC)


async def compose(settings: IdentitySettings, *, clock: Callable[[], datetime] = _now) -> GrpcProcess:
    url = settings.effective_database_url
    if not url:
        sys.exit("identity: set IDENTITY_DATABASE_URL or DATABASE_URL (`avgate run` sets them for the local stack)")
    registry = CollectorRegistry()
    try:
        handoff = incident_handoff(settings, SCHEMA, registry)
    except (ValueError, OSError) as exc:
        sys.exit(f"identity: {exc}")
    try:
        vault, indexer = wiring.vault_and_indexer(settings)
        code_keys = wiring.code_keys(settings)
        sms = wiring.sms_sender(settings)
        verifier = wiring.identity_verifier(settings)
    except (ValueError, OSError) as exc:
        sys.exit(f"identity: {exc}")
    limits = wiring.abuse_limits(settings, code_keys, clock=clock)
    codes = wiring.one_time_codes(settings, code_keys, clock=clock)
    engine = create_engine_for(url)
    service = IdentityService(SqlIdentityStore(engine, limits), clock=clock)
    verification = VerificationService(
        SqlVerificationStore(engine, codes=codes, limits=limits, clock=clock),
        vault=vault,
        indexer=indexer,
        sms=sms,
        verifier=verifier,
        clock=clock,
    )
    background = [handoff.run] if handoff is not None else []
    background.append(IndexRotation(verification, interval_seconds=settings.reindex_interval_seconds).run)
    background.append(Housekeeping(engine, codes, limits, interval_seconds=settings.housekeeping_interval_seconds).run)
    if settings.expiry_enabled:
        expiry = EnforcementExpiry(
            service, interval_seconds=settings.expiry_interval_seconds, batch_size=settings.expiry_batch_size
        )
        background.append(expiry.run)

    async def close() -> None:
        await engine.dispose()

    return service_process(
        settings,
        registrations(IdentityServicer(service, verification)),
        background=background,
        on_shutdown=[close],
        registry=registry,
    )


if __name__ == "__main__":
    run(IdentitySettings, compose)
