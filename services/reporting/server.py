"""gRPC servicers of the reporting process.

Until its issue lands every RPC answers UNIMPLEMENTED, behind the same
principal verification as a real servicer.
"""

from __future__ import annotations

from avgate.kernel.grpc.server import ServiceRegistration
from avgate.kernel.grpc.unimplemented import unimplemented_registrations
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc


def registrations() -> list[ServiceRegistration]:
    return unimplemented_registrations(reporting_pb2, reporting_pb2_grpc)
