"""Proto ⇄ domain conversions, once for every servicer and command.

Enums: a domain value is the proto name without its prefix, in lower case
(`INCIDENT_CATEGORY_RUMOR` ⇄ "rumor"); `ProtoEnum` converts both ways and
names the field in the error. Timestamps and durations: a value outside what
`google.protobuf.Timestamp` allows (years 0001-9999) is INVALID_ARGUMENT for
its field, never a ValueError. Only servicers, the gateway and the command
line import this module; domain code never sees proto types.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from avgate.common.v1 import common_pb2
from avgate.kernel.errors import FieldViolation, InvalidArgument
from avgate.kernel.principal import RegulatorScope, Role

T = TypeVar("T")

# google.protobuf.Timestamp's documented range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799
TIMESTAMP_RANGE = "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
# google.protobuf.Duration's documented range: ±10,000 years; timedelta holds less (±999,999,999 days).
DURATION_MAX_SECONDS = 315_576_000_000
DURATION_RANGE = "must be within ±10,000 years, with seconds and nanos of one sign"


class ProtoEnum(Generic[T]):
    """One proto enum and its domain counterpart.

    `parse` builds the domain value from the lower-case suffix: a domain
    `enum.Enum` class whose values are those suffixes, or `str` where the
    domain keeps plain names (departments).
    """

    def __init__(self, wrapper: EnumTypeWrapper, prefix: str, parse: Callable[[str], T]):
        self.wrapper = wrapper
        self.prefix = prefix
        self._parse = parse

    def name_of(self, number: int) -> str | None:
        """The domain name of a number; None for *_UNSPECIFIED or a number this build does not know."""
        try:
            name = self.wrapper.Name(number)  # type: ignore[arg-type]
        except ValueError:
            return None
        suffix = name.removeprefix(self.prefix).lower()
        return None if suffix == "unspecified" else suffix

    def to_domain(self, number: int, field: str | None = None) -> T | None:
        """None for UNSPECIFIED; an unknown number is a violation of `field` when one is named, else None."""
        name = self.name_of(number)
        if name is None:
            if number != 0 and field is not None:
                raise InvalidArgument(FieldViolation(field, "not a known value"))
            return None
        return self._parse(name)

    def required(self, number: int, field: str) -> T:
        """The domain value of a field that must be set."""
        value = self.to_domain(number, field)
        if value is None:
            raise InvalidArgument(FieldViolation(field, "is required"))
        return value

    def to_domain_list(self, numbers: Iterable[int], field: str) -> tuple[T, ...]:
        """Filter values: UNSPECIFIED is ignored, an unknown number is a violation of `field[i]`."""
        values = []
        for i, number in enumerate(numbers):
            if number == 0:
                continue
            value = self.to_domain(number, f"{field}[{i}]")
            if value is not None:
                values.append(value)
        return tuple(values)

    def to_proto(self, value: T | str | None) -> Any:
        """The proto number of a domain value; 0 (UNSPECIFIED) for None."""
        if value is None:
            return 0
        name = value.value if isinstance(value, enum.Enum) else str(value)
        return self.wrapper.Value(f"{self.prefix}{name.upper()}")


def timestamp_in_range(value: timestamp_pb2.Timestamp) -> bool:
    return TIMESTAMP_MIN_SECONDS <= value.seconds <= TIMESTAMP_MAX_SECONDS and 0 <= value.nanos <= 999_999_999


def time_from_proto(message: Any, field: str, path: str | None = None) -> datetime | None:
    """The aware datetime of `message.field`; None when unset; INVALID_ARGUMENT (at `path`) outside 0001-9999."""
    if not message.HasField(field):
        return None
    value: timestamp_pb2.Timestamp = getattr(message, field)
    if not timestamp_in_range(value):
        raise InvalidArgument(FieldViolation(path or field, TIMESTAMP_RANGE))
    return value.ToDatetime(tzinfo=UTC)


def duration_in_range(value: duration_pb2.Duration) -> bool:
    if (
        not -DURATION_MAX_SECONDS <= value.seconds <= DURATION_MAX_SECONDS
        or not -999_999_999 <= value.nanos <= 999_999_999
    ):
        return False
    return not (value.seconds > 0 and value.nanos < 0) and not (value.seconds < 0 and value.nanos > 0)


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


def duration_from_proto(value: duration_pb2.Duration, present: bool, path: str = "duration") -> timedelta | None:
    """The timedelta of a duration field; None when unset; INVALID_ARGUMENT (at `path`) when out of range."""
    if not present:
        return None
    if not duration_in_range(value):
        raise InvalidArgument(FieldViolation(path, DURATION_RANGE))
    try:
        return value.ToTimedelta()
    except OverflowError:
        raise InvalidArgument(FieldViolation(path, DURATION_RANGE)) from None


def duration(value: timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message
