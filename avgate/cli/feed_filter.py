"""The incident filter that `avgate feed follow` and `avgate feed export` both build from their options."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avgate.kernel.convert import ProtoEnum


def _proto_time(value: str | None, option: str) -> Any:
    """An ISO 8601 option as a Timestamp (UTC when it names no zone); None when the option is absent."""
    from avgate.kernel.convert import timestamp

    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise SystemExit(f"{option}: not an ISO 8601 time: {value!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return timestamp(moment)


def _proto_number(kind: ProtoEnum[str], name: str, option: str) -> Any:
    """The number of an option's enum value by its domain name; an unknown name stops the command."""
    try:
        return kind.to_proto(name)
    except ValueError:
        known = ", ".join(n for n in map(kind.name_of, kind.wrapper.values()) if n is not None)
        raise SystemExit(f"{option}: unknown value {name!r}; one of {known}") from None


def incident_filter(args: argparse.Namespace) -> Any:
    """The IncidentFilter the command-line filters name (--category, --department, --region, --tenant,
    --since, --until), for `follow` and `export` alike."""
    from avgate.common.v1 import common_pb2
    from avgate.kernel.convert import ProtoEnum
    from avgate.reporting.v1 import reporting_pb2

    category = ProtoEnum(reporting_pb2.IncidentCategory, "INCIDENT_CATEGORY_", str)
    department = ProtoEnum(common_pb2.Department, "DEPARTMENT_", str)
    incidents = reporting_pb2.IncidentFilter(
        categories=[_proto_number(category, c, "--category") for c in args.category],
        departments=[_proto_number(department, d, "--department") for d in args.department],
        region_codes=args.region,
        tenant_ids=args.tenant,
    )
    since, until = _proto_time(args.since, "--since"), _proto_time(args.until, "--until")
    if since is not None or until is not None:
        incidents.create_time_range.CopyFrom(common_pb2.TimeRange(start_time=since, end_time=until))
    return incidents
