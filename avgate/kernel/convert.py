"""Proto ⇄ domain conversions of the common types (used only by server.py files)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from avgate.common.v1 import common_pb2
from avgate.kernel.principal import RegulatorScope, Role

_ROLE_TO_PROTO = {
    Role.PROVIDER: common_pb2.ROLE_PROVIDER,
    Role.REGULATOR: common_pb2.ROLE_REGULATOR,
    Role.PUBLIC: common_pb2.ROLE_PUBLIC,
    Role.OPERATOR: common_pb2.ROLE_OPERATOR,
    Role.SERVICE: common_pb2.ROLE_SERVICE,
}
_ROLE_FROM_PROTO: dict[int, Role] = {v: k for k, v in _ROLE_TO_PROTO.items()}

_DEPARTMENT_TO_PROTO = {
    "cyberspace": common_pb2.DEPARTMENT_CYBERSPACE,
    "culture_tourism": common_pb2.DEPARTMENT_CULTURE_TOURISM,
    "radio_television": common_pb2.DEPARTMENT_RADIO_TELEVISION,
    "public_security": common_pb2.DEPARTMENT_PUBLIC_SECURITY,
}
_DEPARTMENT_FROM_PROTO: dict[int, str] = {v: k for k, v in _DEPARTMENT_TO_PROTO.items()}


def role_from_proto(value: int) -> Role | None:
    """None for ROLE_UNSPECIFIED or an unknown number (the use case reports the field)."""
    return _ROLE_FROM_PROTO.get(value)


def role_to_proto(role: Role) -> int:
    return _ROLE_TO_PROTO[role]


def scope_from_proto(scope: common_pb2.RegulatorScope, present: bool) -> RegulatorScope | None:
    if not present:
        return None
    return RegulatorScope(
        departments=tuple(_DEPARTMENT_FROM_PROTO.get(d, f"unknown:{d}") for d in scope.departments),
        region_codes=tuple(scope.region_codes),
    )


def scope_to_proto(scope: RegulatorScope | None) -> common_pb2.RegulatorScope | None:
    if scope is None:
        return None
    return common_pb2.RegulatorScope(
        departments=[_DEPARTMENT_TO_PROTO[d] for d in scope.departments if d in _DEPARTMENT_TO_PROTO],
        region_codes=list(scope.region_codes),
    )


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def duration_from_proto(value: duration_pb2.Duration, present: bool) -> timedelta | None:
    return value.ToTimedelta() if present else None
