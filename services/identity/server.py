"""gRPC servicers of the identity process.

Until its issue lands every RPC answers UNIMPLEMENTED, behind the same
principal verification as a real servicer.
"""

from __future__ import annotations

from avgate.identity.v1 import identity_pb2, identity_pb2_grpc
from avgate.kernel.grpc.server import ServiceRegistration
from avgate.kernel.grpc.unimplemented import unimplemented_registrations


def registrations() -> list[ServiceRegistration]:
    return unimplemented_registrations(identity_pb2, identity_pb2_grpc)
