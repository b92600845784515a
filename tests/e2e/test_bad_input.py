"""Bad input through the real gateway never reaches INTERNAL.

For every unary RPC of every service (read from the compiled contracts, so a
new RPC is covered without new test code), messages generated from the
request's descriptor and random metadata are sent through the gateway with
each development key and without one. Whatever the answer (success, a field
violation, not found, permission denied, unimplemented), it is never
INTERNAL or UNKNOWN: those mean the input reached code that did not expect it.

Generation is deterministic (hypothesis with `derandomize`), leans on the
boundaries that broke things before (NUL in strings, Timestamps past year
9999, ids shaped like mobile numbers, unknown enum numbers, 64-bit extremes),
and one explicit boundary message per method sets every string to NUL and
every Timestamp to year 10000. The recorded failures are replayed by name in
`TestRecordedCases`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avgate.common.v1 import common_pb2
from avgate.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from avgate.identity.v1 import identity_pb2
from avgate.kernel.grpc.access import AccessTable, MethodAccess
from avgate.kernel.grpc.validation import request_violations
from avgate.kernel.principal import Role
from avgate.reporting.v1 import reporting_pb2
from tests.conftest import Database
from tests.support import ledger_entries, unpack
from tests.support.stack import RunningStack

pytestmark = pytest.mark.e2e

PACKAGES = ("gateway", "identity", "screening", "reporting", "complaints")
CALLERS = ("operator", "provider", "regulator", None)
NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
EXAMPLES_PER_METHOD = 12
MAX_DEPTH = 3

# Strings that broke services before, and their neighbours.
BOUNDARY_STRINGS = [
    "",
    "\x00",
    "a\x00b",
    "13800138000",
    "+86 138 0013 8000",
    "11010519491231002X",
    "91350100M000100Y43",
    " ",
    "x" * 5000,
    "名字\u200b\U0001f600",
    "../../etc/passwd",
    "%00",
    "acme",
    "dev-tenant",
    "000000",
    "110000",
    "00000000-0000-0000-0000-000000000000",
]
INT64_EDGES = [0, 1, -1, 2**31 - 1, -(2**31), 2**53 + 1, 2**63 - 1, -(2**63)]
UINT64_EDGES = [0, 1, 2**32 - 1, 2**53 + 1, 2**63, 2**64 - 1]
TIMESTAMP_SECONDS = [0, 1_700_000_000, 253_402_300_799, 253_402_300_800, -62_135_596_800, -62_135_596_801, 2**62]
NANOS = [0, 999_999_999, 1_000_000_000, -1]


def unary_methods() -> list[MethodDescriptor]:
    methods = []
    for name in PACKAGES:
        pb2 = importlib.import_module(f"avgate.{name}.v1.{name}_pb2")
        for service in pb2.DESCRIPTOR.services_by_name.values():
            methods.extend(m for m in service.methods if not m.client_streaming and not m.server_streaming)
    return methods


METHODS = unary_methods()
ACCESS = AccessTable.from_contracts()


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(BOUNDARY_STRINGS), st.text(max_size=40))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.just(b""), st.binary(max_size=64), st.just(b"\x00" * 33))
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.sampled_from([-1, 999, 2**31 - 1]))
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.just(0.0))
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.one_of(st.sampled_from(UINT64_EDGES), st.integers(0, 2**64 - 1))
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.one_of(st.sampled_from([0, 1, 2**32 - 1]), st.integers(0, 2**32 - 1))
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return st.one_of(st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1))
    return st.one_of(st.sampled_from(INT64_EDGES), st.integers(-(2**63), 2**63 - 1))


def timestamp_or_duration(descriptor: Descriptor) -> st.SearchStrategy[dict[str, int]]:
    seconds = TIMESTAMP_SECONDS if descriptor.full_name.endswith("Timestamp") else [0, 1, -1, 86_400, 315_576_000_001]
    return st.fixed_dictionaries({"seconds": st.sampled_from(seconds), "nanos": st.sampled_from(NANOS)})


def field_value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_fields(field.message_type, depth + 1)
    return scalar(field)


def message_fields(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """A dict of field name → generated value (scalars, nested dicts, lists, maps) for `descriptor`."""
    if descriptor.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        return timestamp_or_duration(descriptor)
    if depth > MAX_DEPTH:
        return st.just({})
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key = field.message_type.fields_by_name["key"]
            value = field.message_type.fields_by_name["value"]
            optional[field.name] = st.dictionaries(scalar(key), field_value(value, depth), max_size=2)
        elif field.is_repeated:
            optional[field.name] = st.lists(field_value(field, depth), max_size=3)
        else:
            optional[field.name] = field_value(field, depth)
    return st.fixed_dictionaries({}, optional=optional)


def fill(message: Message, values: dict[str, Any]) -> None:
    """Sets generated values on a message; a member of a oneof set later wins, as on the wire."""
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for k, v in value.items():
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    fill(target[k], v)
                else:
                    target[k] = v
        elif field.is_repeated:
            for item in value:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    fill(target.add(), item)
                else:
                    target.append(item)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            target.SetInParent()
            fill(target, value)
        else:
            setattr(message, name, value)


def boundary_message(descriptor: Descriptor, depth: int = 0) -> Message:
    """Every string NUL-laden and every Timestamp in year 10000, all the way down (one item per list)."""
    message = message_class(descriptor)()
    if descriptor.full_name == "google.protobuf.Timestamp":
        message.seconds = 253_402_300_800  # type: ignore[attr-defined]
        return message
    if descriptor.full_name == "google.protobuf.Duration" or depth > MAX_DEPTH:
        return message
    for field in descriptor.fields:
        if field.containing_oneof is not None and field.containing_oneof.fields[0] is not field:
            continue
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                getattr(message, field.name).append("id\x00")
            else:
                setattr(message, field.name, "id\x00")
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not is_map:
            nested = boundary_message(field.message_type, depth + 1)
            if field.is_repeated:
                getattr(message, field.name).add().CopyFrom(nested)
            else:
                getattr(message, field.name).CopyFrom(nested)
    return message


def call(
    stack: RunningStack, method: MethodDescriptor, request: Message, metadata: list[tuple[str, str]]
) -> grpc.RpcError | None:
    with grpc.insecure_channel(stack.gateway) as channel:
        rpc = channel.unary_unary(
            f"/{method.containing_service.full_name}/{method.name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=lambda b: b,
        )
        try:
            rpc(request, metadata=metadata, timeout=20)
        except grpc.RpcError as exc:
            return exc
    return None


def caller_metadata(stack: RunningStack, caller: str | None, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    metadata = list(extra)
    if caller is not None:
        metadata.append(("authorization", f"Bearer {stack.description['development_api_keys'][caller]}"))
    return metadata


def describe(error: grpc.RpcError | None, method: MethodDescriptor, request: Message, metadata: Any) -> str:
    code = error.code().name if error is not None else "OK"  # type: ignore[attr-defined]
    details = error.details() if error is not None else ""  # type: ignore[attr-defined]
    sent = json.dumps([list(m) for m in metadata if m[0] != "authorization"])
    return f"{method.full_name} gave {code} ({details}) for {request!r} with {sent}"


METADATA = st.lists(
    st.tuples(
        st.sampled_from(["x-request-id", "x-avgate-end-user-address", "x-api-key"]),
        st.one_of(
            st.sampled_from(["13800138000", "", "a" * 65, "::1", "999.1.1.1", "req-1", "11010519491231002X"]),
            st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
        ),
    ),
    max_size=2,
)


@pytest.fixture(scope="module")
def stack(running: RunningStack) -> Iterator[RunningStack]:
    yield running


class TestGeneratedRequests:
    @pytest.mark.parametrize("method", METHODS, ids=[m.full_name for m in METHODS])
    def test_no_generated_request_reaches_internal(self, stack: RunningStack, method: MethodDescriptor) -> None:
        request_type = message_class(method.input_type)

        @settings(
            max_examples=EXAMPLES_PER_METHOD,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(values=message_fields(method.input_type), caller=st.sampled_from(CALLERS), extra=METADATA)
        def check(values: dict[str, Any], caller: str | None, extra: list[tuple[str, str]]) -> None:
            request = request_type()
            fill(request, values)
            metadata = caller_metadata(stack, caller, extra)
            error = call(stack, method, request, metadata)
            assert error is None or error.code() not in NEVER, describe(error, method, request, metadata)  # type: ignore[attr-defined]

        check()

    @pytest.mark.parametrize("method", METHODS, ids=[m.full_name for m in METHODS])
    @pytest.mark.parametrize("caller", ["operator", "provider", "regulator"])
    def test_the_boundary_message_is_refused_before_any_handler(
        self, stack: RunningStack, method: MethodDescriptor, caller: str
    ) -> None:
        """Every string NUL-laden, every Timestamp in year 10000: a caller the authorisation table lets
        in gets INVALID_ARGUMENT before any handler runs; any other caller PERMISSION_DENIED before that."""
        request = boundary_message(method.input_type)
        metadata = caller_metadata(stack, caller, [])
        error = call(stack, method, request, metadata)
        assert error is None or error.code() not in NEVER, describe(error, method, request, metadata)  # type: ignore[attr-defined]
        path = f"/{method.containing_service.full_name}/{method.name}"
        if Role(caller) not in (ACCESS.entry(path) or MethodAccess()).roles:
            assert error is not None, describe(error, method, request, metadata)
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED, describe(error, method, request, metadata)  # type: ignore[attr-defined]
        elif request_violations(request):
            assert error is not None, describe(error, method, request, metadata)
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, describe(error, method, request, metadata)  # type: ignore[attr-defined]


def bad_request_fields(error: grpc.RpcError) -> set[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error carries google.rpc details"
    (bad,) = unpack(status.details, error_details_pb2.BadRequest)
    return {v.field for v in bad.field_violations}


class TestRecordedCases:
    """The inputs that once gave INTERNAL through the gateway, replayed one by one."""

    @pytest.mark.parametrize(
        ("method", "request_message", "field"),
        [
            (
                "/avgate.identity.v1.IdentityService/GetEnforcementAction",
                identity_pb2.GetEnforcementActionRequest(action_id="ea\x00"),
                "action_id",
            ),
            (
                "/avgate.identity.v1.IdentityService/WithdrawConsent",
                identity_pb2.WithdrawConsentRequest(consent_id="c\x00"),
                "consent_id",
            ),
            (
                "/avgate.reporting.v1.AssessmentService/GetAssessment",
                reporting_pb2.GetAssessmentRequest(assessment_id="\x00"),
                "assessment_id",
            ),
            (
                "/avgate.identity.v1.IdentityService/ListEnforcementActions",
                identity_pb2.ListEnforcementActionsRequest(
                    user=common_pb2.UserRef(tenant_id="dev-tenant", user_id="u1"),
                    create_time_range=common_pb2.TimeRange(start_time=timestamp_pb2.Timestamp(seconds=253_402_300_800)),
                ),
                "create_time_range.start_time",
            ),
        ],
        ids=["nul-get-enforcement-action", "nul-withdraw-consent", "nul-get-assessment", "year-10000-list-actions"],
    )
    def test_is_invalid_argument_naming_the_field(
        self, stack: RunningStack, method: str, request_message: Message, field: str
    ) -> None:
        key = stack.description["development_api_keys"]["operator"]
        with grpc.insecure_channel(stack.gateway) as channel:
            rpc = channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString())
            with pytest.raises(grpc.RpcError) as caught:
                rpc(request_message, metadata=[("authorization", f"Bearer {key}")], timeout=20)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert bad_request_fields(caught.value) == {field}

    def test_a_mobile_shaped_request_id_is_replaced_and_never_written(
        self, stack: RunningStack, database: Database
    ) -> None:
        offered = "13800138000"
        key = stack.description["development_api_keys"]["operator"]
        with grpc.insecure_channel(stack.gateway) as channel:
            created, call = gateway_pb2_grpc.GatewayServiceStub(channel).CreateApiKey.with_call(
                gateway_pb2.CreateApiKeyRequest(
                    display_name="rid check", role=common_pb2.ROLE_PROVIDER, tenant_id="rid-tenant"
                ),
                metadata=[("authorization", f"Bearer {key}"), ("x-request-id", offered)],
                timeout=20,
            )
        echoed = dict(call.initial_metadata())["x-request-id"]
        assert echoed != offered and echoed
        (entry,) = ledger_entries(database.admin_url, "api_key.create", created.api_key.key_id)
        assert entry["actor"]["request_id"] == echoed
        assert offered not in json.dumps(entry)

    def test_a_well_formed_request_id_is_kept(self, stack: RunningStack, database: Database) -> None:
        key = stack.description["development_api_keys"]["operator"]
        with grpc.insecure_channel(stack.gateway) as channel:
            created, call = gateway_pb2_grpc.GatewayServiceStub(channel).CreateApiKey.with_call(
                gateway_pb2.CreateApiKeyRequest(
                    display_name="rid kept", role=common_pb2.ROLE_PROVIDER, tenant_id="rid-tenant"
                ),
                metadata=[("authorization", f"Bearer {key}"), ("x-request-id", "order-7f3a")],
                timeout=20,
            )
        assert dict(call.initial_metadata())["x-request-id"] == "order-7f3a"
        (entry,) = ledger_entries(database.admin_url, "api_key.create", created.api_key.key_id)
        assert entry["actor"]["request_id"] == "order-7f3a"
