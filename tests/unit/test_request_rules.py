"""The rules every request obeys, checked by descriptor before any handler runs
(avgate.kernel.grpc.validation), and which caller request ids are kept."""

from __future__ import annotations

import pytest
from google.protobuf import timestamp_pb2

from avgate.common.v1 import common_pb2
from avgate.gateway.v1 import gateway_pb2
from avgate.identity.v1 import identity_pb2
from avgate.kernel import convert
from avgate.kernel.errors import InvalidArgument
from avgate.kernel.grpc.validation import NUL, check_request, request_violations
from avgate.kernel.principal import accepted_request_id
from avgate.reporting.v1 import reporting_pb2


def fields(message: object) -> dict[str, str]:
    return {v.field: v.description for v in request_violations(message)}  # type: ignore[arg-type]


class TestNulCharacters:
    def test_a_nul_in_a_top_level_string_names_the_field(self) -> None:
        assert fields(identity_pb2.GetEnforcementActionRequest(action_id="a\x00")) == {"action_id": NUL}

    def test_a_nul_in_a_nested_repeated_message_names_the_index(self) -> None:
        request = reporting_pb2.CreateIncidentRequest(
            incident=reporting_pb2.IncidentInput(
                content=[common_pb2.ContentRef(content_id="ok"), common_pb2.ContentRef(content_id="b\x00d")]
            )
        )
        assert fields(request) == {"incident.content[1].content_id": NUL}

    def test_a_nul_in_a_repeated_string_names_the_index(self) -> None:
        request = reporting_pb2.ListIncidentsRequest(filter=reporting_pb2.IncidentFilter(tenant_ids=["acme", "\x00"]))
        assert fields(request) == {"filter.tenant_ids[1]": NUL}

    def test_clean_strings_pass(self) -> None:
        assert request_violations(identity_pb2.GetEnforcementActionRequest(action_id="名字-1 ok")) == []


class TestTimestamps:
    @pytest.mark.parametrize(
        ("seconds", "nanos"),
        [(253_402_300_800, 0), (-62_135_596_801, 0), (0, 1_000_000_000), (0, -1), (2**62, 0)],
        ids=["year-10000", "before-year-1", "nanos-too-large", "negative-nanos", "far-future"],
    )
    def test_outside_years_1_to_9999_is_refused_at_its_path(self, seconds: int, nanos: int) -> None:
        request = reporting_pb2.ListIncidentsRequest(
            filter=reporting_pb2.IncidentFilter(
                create_time_range=common_pb2.TimeRange(start_time=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))
            )
        )
        assert fields(request) == {"filter.create_time_range.start_time": convert.TIMESTAMP_RANGE}

    @pytest.mark.parametrize(
        "seconds", [253_402_300_799, -62_135_596_800, 0], ids=["last-second", "first-second", "epoch"]
    )
    def test_the_edges_of_the_range_pass(self, seconds: int) -> None:
        request = reporting_pb2.ListIncidentsRequest(
            filter=reporting_pb2.IncidentFilter(
                create_time_range=common_pb2.TimeRange(start_time=timestamp_pb2.Timestamp(seconds=seconds))
            )
        )
        assert request_violations(request) == []

    def test_time_from_proto_refuses_what_datetime_cannot_hold(self) -> None:
        request = common_pb2.TimeRange(start_time=timestamp_pb2.Timestamp(seconds=253_402_300_800))
        with pytest.raises(InvalidArgument) as caught:
            convert.time_from_proto(request, "start_time", "filter.create_time_range.start_time")
        assert [v.field for v in caught.value.violations] == ["filter.create_time_range.start_time"]


class TestDurations:
    def test_a_duration_beyond_ten_thousand_years_is_refused(self) -> None:
        request = gateway_pb2.CreateApiKeyRequest()
        request.ttl.seconds = 315_576_000_001
        assert fields(request) == {"ttl": convert.DURATION_RANGE}

    def test_duration_from_proto_reports_the_path(self) -> None:
        request = gateway_pb2.CreateApiKeyRequest()
        request.ttl.seconds = 1
        request.ttl.nanos = -5
        with pytest.raises(InvalidArgument) as caught:
            convert.duration_from_proto(request.ttl, True, "ttl")
        assert caught.value.violations[0].field == "ttl"


class TestCheckRequest:
    def test_raises_invalid_argument_with_every_violation(self) -> None:
        request = reporting_pb2.ListIncidentsRequest(
            filter=reporting_pb2.IncidentFilter(
                tenant_ids=["\x00"],
                create_time_range=common_pb2.TimeRange(end_time=timestamp_pb2.Timestamp(seconds=253_402_300_800)),
            )
        )
        with pytest.raises(InvalidArgument) as caught:
            check_request(request)
        assert {v.field for v in caught.value.violations} == {
            "filter.tenant_ids[0]",
            "filter.create_time_range.end_time",
        }

    def test_bytes_of_the_gateways_pass_through_are_left_to_the_service(self) -> None:
        check_request(b"\x00\x00")


class TestRequestIds:
    @pytest.mark.parametrize("offered", ["req-1", "a" * 64, "0f3c.trace_1"])
    def test_a_well_formed_id_is_kept(self, offered: str) -> None:
        assert accepted_request_id(offered) == offered

    @pytest.mark.parametrize(
        "offered",
        ["13800138000", "8613800138000", "11010519491231002X", "91350100M000100Y43", "a" * 65, "a b", "", None],
        ids=["mobile", "mobile-86", "resident-id", "credit-code", "too-long", "space", "empty", "absent"],
    )
    def test_personal_data_or_a_malformed_id_is_replaced(self, offered: str | None) -> None:
        assert accepted_request_id(offered) is None
