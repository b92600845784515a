"""gRPC servicers of the screening process.

Until its issue lands every RPC answers UNIMPLEMENTED, behind the same
principal verification as a real servicer.
"""

from __future__ import annotations

from avgate.kernel.grpc.server import ServiceRegistration
from avgate.kernel.grpc.unimplemented import unimplemented_registrations
from avgate.screening.v1 import screening_pb2, screening_pb2_grpc


def registrations() -> list[ServiceRegistration]:
    return unimplemented_registrations(screening_pb2, screening_pb2_grpc)
