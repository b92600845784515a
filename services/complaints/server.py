"""gRPC servicers of the complaints process.

Until its issue lands every RPC answers UNIMPLEMENTED, behind the same
principal verification as a real servicer.
"""

from __future__ import annotations

from avgate.complaints.v1 import complaints_pb2, complaints_pb2_grpc
from avgate.kernel.grpc.server import ServiceRegistration
from avgate.kernel.grpc.unimplemented import unimplemented_registrations


def registrations() -> list[ServiceRegistration]:
    return unimplemented_registrations(complaints_pb2, complaints_pb2_grpc)
