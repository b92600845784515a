"""Who may call what: the default-deny authorisation table, read from the contracts.

Every RPC carries a `(avgate.common.v1.access)` method option (a
MethodAccess). `AccessTable` reads them from the compiled contracts of every
avgate API once, at start-up, and answers two questions:

- `check_outside(method, role)`: may an outside caller in this role (None for
  a caller without a key) call the method? The gateway asks it after
  authenticating the key and before forwarding or validating anything.
- `check_token(method, principal)`: may the principal in a verified token
  call it? Each service asks it for every call: for a gateway-issued token the
  same role rule, for a token another avgate process signed, whether that
  process is listed for the method and the principal it acts for has a role it
  may carry. A compromised service therefore cannot act as an operator, nor
  call what it has no business calling.

A method without an entry is refused to everyone. Denials are
PERMISSION_DENIED (UNAUTHENTICATED for a keyless call to a method that needs
a key), with the method named and nothing about the table's contents.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from google.protobuf.descriptor import FileDescriptor

from avgate.common.v1 import common_pb2
from avgate.kernel import convert
from avgate.kernel.errors import PermissionDenied, Unauthenticated
from avgate.kernel.principal import Principal, Role

API_PACKAGES = ("gateway", "identity", "screening", "reporting", "complaints")
"""Every avgate API with RPCs (`avgate.<name>.v1.<name>_pb2`)."""


@dataclass(frozen=True)
class MethodAccess:
    """One RPC's entry (avgate.common.v1.MethodAccess), in domain terms."""

    roles: frozenset[Role] = frozenset()
    anonymous: bool = False
    service_callers: Mapping[str, frozenset[Role]] = field(default_factory=dict)
    key_management: bool = False

    @classmethod
    def from_proto(cls, entry: common_pb2.MethodAccess) -> MethodAccess:
        def roles(numbers: Iterable[int]) -> frozenset[Role]:
            return frozenset(r for r in (convert.role_from_proto(n) for n in numbers) if r is not None)

        return cls(
            roles=roles(entry.allowed_roles),
            anonymous=entry.allow_anonymous,
            service_callers={c.process: roles(c.origin_roles) for c in entry.allowed_service_callers},
            key_management=entry.key_management,
        )


def method_entries(module: ModuleType) -> dict[str, common_pb2.MethodAccess | None]:
    """Every RPC of a generated *_pb2 module by full path ("/pkg.Service/Method"), with its entry or None."""
    descriptor: FileDescriptor = module.DESCRIPTOR
    found: dict[str, common_pb2.MethodAccess | None] = {}
    for service in descriptor.services_by_name.values():
        for method in service.methods:
            options = method.GetOptions()
            extension: Any = common_pb2.access  # the generated stubs type it as a plain FieldDescriptor
            has = options.HasExtension(extension)
            found[f"/{service.full_name}/{method.name}"] = options.Extensions[extension] if has else None
    return found


class AccessTable:
    def __init__(self, entries: Mapping[str, MethodAccess]):
        self._entries = dict(entries)

    @classmethod
    def from_contracts(cls, packages: Iterable[str] = API_PACKAGES) -> AccessTable:
        entries: dict[str, MethodAccess] = {}
        for name in packages:
            module = importlib.import_module(f"avgate.{name}.v1.{name}_pb2")
            for method, entry in method_entries(module).items():
                if entry is not None:
                    entries[method] = MethodAccess.from_proto(entry)
        return cls(entries)

    def entry(self, method: str) -> MethodAccess | None:
        return self._entries.get(method)

    def allows_anonymous(self, method: str) -> bool:
        entry = self._entries.get(method)
        return entry is not None and entry.anonymous

    def check_outside(self, method: str, role: Role | None) -> MethodAccess:
        """The entry, if an outside caller in `role` (None: no key) may call `method`; else the error."""
        entry = self._entries.get(method)
        if entry is None:
            raise PermissionDenied(f"{method} is not open to any caller", reason="ERROR_REASON_PERMISSION_DENIED")
        if role is None:
            if not entry.anonymous:
                raise Unauthenticated(f"{method} needs an API key (authorization: Bearer <key>)")
            return entry
        if role not in entry.roles and not (role is Role.PUBLIC and entry.anonymous):
            raise PermissionDenied(f"role {role.value} may not call {method}")
        return entry

    def check_token(self, method: str, principal: Principal) -> MethodAccess:
        """The entry, if the principal of a verified token may call `method`; else PermissionDenied."""
        entry = self._entries.get(method)
        if entry is None:
            raise PermissionDenied(f"{method} is not open to any caller")
        if principal.role is not Role.SERVICE:
            if principal.role in entry.roles or (principal.role is Role.PUBLIC and entry.anonymous):
                return entry
            raise PermissionDenied(f"role {principal.role.value} may not call {method}")
        carried = entry.service_callers.get(principal.subject)
        if carried is None:
            raise PermissionDenied(f"service {principal.subject} may not call {method}")
        # Whom the chain of services acts for in the end (identity acting for screening acting for a
        # provider acts for the provider); a service acting on its own carries itself (ROLE_SERVICE).
        origin_role = principal.effective.role
        if origin_role not in carried:
            raise PermissionDenied(
                f"service {principal.subject} may not call {method} acting for role {origin_role.value}"
            )
        return entry
