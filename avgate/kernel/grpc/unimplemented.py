"""Registrations for a proto file's services whose issue has not landed yet.

The generated base servicers answer every RPC with UNIMPLEMENTED (through
the error-mapping interceptor), behind the same principal check as real
ones. A service replaces these with its own servicers as it is built.
"""

from __future__ import annotations

from types import ModuleType

from avgate.kernel.grpc.server import ServiceRegistration


def unimplemented_registrations(pb2: ModuleType, pb2_grpc: ModuleType) -> list[ServiceRegistration]:
    registrations = []
    for service in pb2.DESCRIPTOR.services_by_name.values():
        servicer_cls = getattr(pb2_grpc, f"{service.name}Servicer")
        add = getattr(pb2_grpc, f"add_{service.name}Servicer_to_server")
        registrations.append(ServiceRegistration(servicer_cls(), add, [service.full_name]))
    return registrations
