"""Domain errors as the caller sees them: the gRPC code and the google.rpc
details each kind of error carries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import grpc
import pytest
from google.protobuf import message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from avgate.common.v1 import common_pb2
from avgate.kernel import errors
from avgate.kernel.grpc.errors import ErrorMappingInterceptor, internal_status, status_for
from avgate.kernel.principal import Principal, Role, bind_principal, unbind_principal

M = TypeVar("M", bound=message.Message)


def details_of(status: status_pb2.Status, kind: type[M]) -> list[M]:
    """Every detail of one kind, unpacked."""
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            unpacked = kind()
            assert detail.Unpack(unpacked)
            found.append(unpacked)
    return found


def detail_of(status: status_pb2.Status, kind: type[M]) -> M:
    """The one detail of a kind the status must carry."""
    found = details_of(status, kind)
    assert len(found) == 1, f"expected one {kind.DESCRIPTOR.name}, got {len(found)}"
    return found[0]


def detail_kinds(status: status_pb2.Status) -> list[str]:
    return [d.TypeName() for d in status.details]


ERRORS_AND_CODES = [
    (errors.InvalidArgument(errors.FieldViolation("name", "must be set")), code_pb2.INVALID_ARGUMENT),
    (errors.Unauthenticated("no key"), code_pb2.UNAUTHENTICATED),
    (errors.InvalidPrincipalToken("replayed"), code_pb2.UNAUTHENTICATED),
    (errors.PermissionDenied("operators only"), code_pb2.PERMISSION_DENIED),
    (errors.NotFound("api_key", "ak1"), code_pb2.NOT_FOUND),
    (errors.AlreadyExists("tenant", "acme"), code_pb2.ALREADY_EXISTS),
    (errors.IdempotencyConflict("request", "idem-1"), code_pb2.ALREADY_EXISTS),
    (errors.FailedPrecondition("account closed"), code_pb2.FAILED_PRECONDITION),
    (errors.ResourceExhausted("slow down", retry_after_seconds=2.5), code_pb2.RESOURCE_EXHAUSTED),
    (errors.DependencyUnavailable("identity"), code_pb2.UNAVAILABLE),
    (errors.DomainError("something the map does not know"), code_pb2.FAILED_PRECONDITION),
]
ERROR_IDS = [
    "invalid-argument",
    "unauthenticated",
    "invalid-principal-token",
    "permission-denied",
    "not-found",
    "already-exists",
    "idempotency-conflict",
    "failed-precondition",
    "resource-exhausted",
    "dependency-unavailable",
    "unmapped-domain-error",
]


@pytest.fixture
def no_principal() -> Iterator[None]:
    """Errors raised outside a call carry no request id."""
    token = bind_principal(None)
    yield
    unbind_principal(token)


@pytest.mark.usefixtures("no_principal")
class TestEveryDomainError:
    @pytest.mark.parametrize(("error", "code"), ERRORS_AND_CODES, ids=ERROR_IDS)
    def test_maps_to_its_grpc_code_with_its_message(self, error: errors.DomainError, code: int) -> None:
        status = status_for(error)

        assert status.code == code
        assert status.message == error.message

    @pytest.mark.parametrize(("error", "code"), ERRORS_AND_CODES, ids=ERROR_IDS)
    def test_carries_one_error_info_in_the_avgate_domain(self, error: errors.DomainError, code: int) -> None:
        info = detail_of(status_for(error), error_details_pb2.ErrorInfo)

        assert info.domain == "avgate"
        assert info.reason == error.reason
        assert dict(info.metadata) == error.metadata

    @pytest.mark.parametrize(("error", "code"), ERRORS_AND_CODES, ids=ERROR_IDS)
    def test_reason_is_a_name_clients_can_branch_on(self, error: errors.DomainError, code: int) -> None:
        reason = detail_of(status_for(error), error_details_pb2.ErrorInfo).reason

        assert common_pb2.ErrorReason.Name(common_pb2.ErrorReason.Value(reason)) == reason

    @pytest.mark.parametrize(
        ("error", "reason"),
        [
            (errors.InvalidPrincipalToken("forged"), "ERROR_REASON_INVALID_PRINCIPAL_TOKEN"),
            (errors.IdempotencyConflict("request", "idem-1"), "ERROR_REASON_IDEMPOTENCY_CONFLICT"),
            (
                errors.FailedPrecondition("not verified", reason="ERROR_REASON_NOT_VERIFIED"),
                "ERROR_REASON_NOT_VERIFIED",
            ),
        ],
        ids=["subclass-of-unauthenticated", "subclass-of-already-exists", "reason-given-when-raised"],
    )
    def test_a_more_specific_reason_wins(self, error: errors.DomainError, reason: str) -> None:
        assert detail_of(status_for(error), error_details_pb2.ErrorInfo).reason == reason


@pytest.mark.usefixtures("no_principal")
class TestInvalidArgument:
    def test_lists_every_field_violation(self) -> None:
        error = errors.InvalidArgument(
            [
                errors.FieldViolation("display_name", "must be 1 to 200 characters"),
                errors.FieldViolation("regulator_scope.region_codes[1]", "must be a 6-digit code", "FORMAT"),
            ]
        )

        bad_request = detail_of(status_for(error), error_details_pb2.BadRequest)

        assert [(v.field, v.description, v.reason) for v in bad_request.field_violations] == [
            ("display_name", "must be 1 to 200 characters", ""),
            ("regulator_scope.region_codes[1]", "must be a 6-digit code", "FORMAT"),
        ]

    def test_message_summarises_the_violations(self) -> None:
        status = status_for(errors.InvalidArgument(errors.FieldViolation("ttl", "must be positive")))

        assert status.message == "invalid request: ttl: must be positive"

    def test_needs_at_least_one_violation(self) -> None:
        with pytest.raises(ValueError, match="at least one field violation"):
            errors.InvalidArgument([])


@pytest.mark.usefixtures("no_principal")
class TestMissingAndDuplicateResources:
    @pytest.mark.parametrize(
        ("error", "resource_type", "resource_name"),
        [
            (errors.NotFound("api_key", "ak1"), "api_key", "ak1"),
            (errors.AlreadyExists("tenant", "acme"), "tenant", "acme"),
            (errors.IdempotencyConflict("request", "idem-1"), "request", "idem-1"),
        ],
        ids=["not-found", "already-exists", "idempotency-conflict"],
    )
    def test_name_the_resource(self, error: errors.DomainError, resource_type: str, resource_name: str) -> None:
        info = detail_of(status_for(error), error_details_pb2.ResourceInfo)

        assert (info.resource_type, info.resource_name) == (resource_type, resource_name)
        assert info.description == error.message

    @pytest.mark.parametrize(
        "error",
        [errors.Unauthenticated("no"), errors.PermissionDenied("no"), errors.FailedPrecondition("no")],
        ids=["unauthenticated", "permission-denied", "failed-precondition"],
    )
    def test_other_errors_carry_no_resource_bad_request_or_retry(self, error: errors.DomainError) -> None:
        assert detail_kinds(status_for(error)) == ["google.rpc.ErrorInfo"]


@pytest.mark.usefixtures("no_principal")
class TestRetryableErrors:
    @pytest.mark.parametrize(
        ("error", "seconds", "nanos"),
        [
            (errors.ResourceExhausted("slow down", retry_after_seconds=2.5), 2, 500_000_000),
            (errors.ResourceExhausted("locked out", retry_after_seconds=900), 900, 0),
            (errors.ResourceExhausted("clock skew", retry_after_seconds=-3), 0, 0),
            (errors.DependencyUnavailable("identity"), 1, 0),
            (errors.DependencyUnavailable("triton", retry_after_seconds=0.25), 0, 250_000_000),
        ],
        ids=["rate-limited", "locked-out", "negative-delay-clamped", "dependency-default", "dependency-given"],
    )
    def test_say_when_to_retry(self, error: errors.DomainError, seconds: int, nanos: int) -> None:
        delay = detail_of(status_for(error), error_details_pb2.RetryInfo).retry_delay

        assert (delay.seconds, delay.nanos) == (seconds, nanos)

    def test_unavailable_dependency_is_named_in_error_info(self) -> None:
        status = status_for(errors.DependencyUnavailable("identity"))

        assert status.code == code_pb2.UNAVAILABLE
        assert dict(detail_of(status, error_details_pb2.ErrorInfo).metadata) == {"dependency": "identity"}
        assert status.message == "identity is unavailable; retry later"


class TestRequestId:
    def test_errors_inside_a_call_carry_its_request_id(self) -> None:
        token = bind_principal(Principal(role=Role.PROVIDER, subject="ak1", tenant_id="acme", request_id="req-42"))
        try:
            status = status_for(errors.NotFound("api_key", "ak9"))
        finally:
            unbind_principal(token)

        assert detail_of(status, error_details_pb2.RequestInfo).request_id == "req-42"

    @pytest.mark.usefixtures("no_principal")
    def test_errors_outside_a_call_carry_none(self) -> None:
        assert details_of(status_for(errors.NotFound("api_key", "ak9")), error_details_pb2.RequestInfo) == []


class TestInternalErrors:
    def test_carry_the_trace_id_and_nothing_else(self) -> None:
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

        status = internal_status(trace_id)

        assert status.code == code_pb2.INTERNAL
        assert status.message == f"internal error; trace id {trace_id}"
        assert detail_kinds(status) == ["google.rpc.ErrorInfo"]
        info = detail_of(status, error_details_pb2.ErrorInfo)
        assert (info.reason, info.domain) == ("ERROR_REASON_INTERNAL", "avgate")
        assert dict(info.metadata) == {"trace_id": trace_id}

    def test_without_a_trace_id_say_only_internal_error(self) -> None:
        status = internal_status("")

        assert status.message == "internal error"
        assert dict(detail_of(status, error_details_pb2.ErrorInfo).metadata) == {}


class AbortingContext:
    """Records what the interceptor aborts with, and aborts as grpc.aio does."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()
    ) -> None:
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata
        raise grpc.aio.AbortError()

    def rich_status(self) -> status_pb2.Status:
        packed = dict(self.trailing_metadata)["grpc-status-details-bin"]
        assert isinstance(packed, bytes)
        return status_pb2.Status.FromString(packed)


@pytest.mark.usefixtures("no_principal")
class TestTheInterceptor:
    async def raise_through(self, error: BaseException, metadata: tuple[tuple[str, str], ...] = ()) -> AbortingContext:
        context = AbortingContext(metadata)
        with pytest.raises(grpc.aio.AbortError):
            async with ErrorMappingInterceptor().scope("/avgate.test.v1.Test/Call", context):  # type: ignore[arg-type]
                raise error
        return context

    async def test_sends_a_domain_error_with_its_details(self) -> None:
        context = await self.raise_through(errors.NotFound("api_key", "ak1"))

        assert context.code is grpc.StatusCode.NOT_FOUND
        assert context.rich_status() == status_for(errors.NotFound("api_key", "ak1"))

    @pytest.mark.parametrize(
        ("offered", "expected"),
        [("req-9", "req-9"), ("not a valid id!", None)],
        ids=["well-formed", "malformed-ignored"],
    )
    async def test_names_the_calls_request_id(self, offered: str, expected: str | None) -> None:
        context = await self.raise_through(errors.NotFound("api_key", "ak1"), (("x-request-id", offered),))
        infos = [d for d in context.rich_status().details if d.Is(error_details_pb2.RequestInfo.DESCRIPTOR)]
        if expected is None:
            assert infos == []
        else:
            info = error_details_pb2.RequestInfo()
            infos[0].Unpack(info)
            assert info.request_id == expected

    async def test_hides_an_unexpected_exception(self, caplog: pytest.LogCaptureFixture) -> None:
        context = await self.raise_through(RuntimeError("password=hunter2 in /srv/db.conf"))

        assert context.code is grpc.StatusCode.INTERNAL
        assert context.details == "internal error"
        status = context.rich_status()
        assert detail_of(status, error_details_pb2.ErrorInfo).reason == "ERROR_REASON_INTERNAL"
        assert b"hunter2" not in status.SerializeToString()
        assert "hunter2" in caplog.text
