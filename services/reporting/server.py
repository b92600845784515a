"""gRPC servicers of the reporting process.

The audit ledger's servicer is real; the rest answer UNIMPLEMENTED until
their issue lands, behind the same principal verification.
"""

from __future__ import annotations

from avgate.kernel.grpc.server import ServiceRegistration
from avgate.kernel.grpc.unimplemented import unimplemented_registrations
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.ledger.server import AuditLedgerServicer

AUDIT_LEDGER = "avgate.reporting.v1.AuditLedgerService"


def registrations(ledger: AuditLedgerServicer) -> list[ServiceRegistration]:
    others = [
        r for r in unimplemented_registrations(reporting_pb2, reporting_pb2_grpc) if AUDIT_LEDGER not in r.service_names
    ]
    return [
        ServiceRegistration(ledger, reporting_pb2_grpc.add_AuditLedgerServiceServicer_to_server, [AUDIT_LEDGER]),
        *others,
    ]
