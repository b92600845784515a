"""Who may call what, through the real gateway: the default-deny table in the contracts.

Every RPC of every service is called with an empty request: without a key,
with a public key, and with each development key. A role the table does not
list is refused with PERMISSION_DENIED — before anything is forwarded or
validated, so an empty request can never earn it INVALID_ARGUMENT instead. A
keyless caller is UNAUTHENTICATED except on the complaint entrance and the
ledger's public proofs. And a service's own token reaches only what the table
lets that service call, for the origin roles it may carry.
"""

from __future__ import annotations

import importlib
import pathlib
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import empty_pb2, message_factory
from google.protobuf.descriptor import MethodDescriptor

from avgate.common.v1 import common_pb2
from avgate.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from avgate.kernel.grpc.access import API_PACKAGES, AccessTable
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.principal import TOKEN_METADATA_KEY, Principal, Role, TokenSigner
from tests.support import RunningStack
from tests.support.stack import service_channel

pytestmark = pytest.mark.e2e

ACCESS = AccessTable.from_contracts()
# Anyone may check the ledger and complain; nothing else is open without a key.
OPEN_TO_ANYONE = {
    "/avgate.complaints.v1.ComplaintsPublicService/UploadEvidence",
    "/avgate.complaints.v1.ComplaintsPublicService/SubmitComplaint",
    "/avgate.complaints.v1.ComplaintsPublicService/LookupTicket",
    "/avgate.complaints.v1.ComplaintsPublicService/FileAppeal",
    "/avgate.complaints.v1.ComplaintsPublicService/ListChannels",
    "/avgate.reporting.v1.AuditLedgerService/GetLatestTreeHead",
    "/avgate.reporting.v1.AuditLedgerService/GetTreeHead",
    "/avgate.reporting.v1.AuditLedgerService/GetInclusionProof",
    "/avgate.reporting.v1.AuditLedgerService/GetConsistencyProof",
    "/avgate.reporting.v1.AuditLedgerService/ListSigningKeys",
}
# What the development public key reached before the table (issue 11): refused now.
ONCE_REACHED_BY_THE_PUBLIC_KEY = [
    "/avgate.gateway.v1.GatewayService/CreateApiKey",
    "/avgate.gateway.v1.GatewayService/RevokeApiKey",
    "/avgate.gateway.v1.GatewayService/RotateApiKey",
    "/avgate.gateway.v1.GatewayService/GetAggregateHealth",
    "/avgate.identity.v1.IdentityService/StartVerification",
    "/avgate.identity.v1.IdentityService/GetAccount",
    "/avgate.identity.v1.IdentityService/IssueEnforcementAction",
    "/avgate.reporting.v1.IncidentService/BatchCreateIncidents",
    "/avgate.reporting.v1.RegulatorFeedService/DownloadExport",
]


def all_methods() -> list[MethodDescriptor]:
    found = []
    for name in API_PACKAGES:
        pb2 = importlib.import_module(f"avgate.{name}.v1.{name}_pb2")
        for service in pb2.DESCRIPTOR.services_by_name.values():
            found.extend(service.methods)
    return found


METHODS = all_methods()


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def code_of(target: str, method: MethodDescriptor, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    """The status an empty request gets (OK included), whatever the method's cardinality."""
    request = message_factory.GetMessageClass(method.input_type)()
    path = path_of(method)
    with grpc.insecure_channel(target) as channel:
        serialize, deserialize = (lambda m: m.SerializeToString()), (lambda b: b)
        try:
            if method.client_streaming and method.server_streaming:
                call = channel.stream_stream(path, request_serializer=serialize, response_deserializer=deserialize)
                next(iter(call(iter([request]), metadata=metadata, timeout=10)), None)
            elif method.client_streaming:
                channel.stream_unary(path, request_serializer=serialize, response_deserializer=deserialize)(
                    iter([request]), metadata=metadata, timeout=10
                )
            elif method.server_streaming:
                responses = channel.unary_stream(path, request_serializer=serialize, response_deserializer=deserialize)(
                    request, metadata=metadata, timeout=3
                )
                next(iter(responses), None)
                responses.cancel()
            else:
                channel.unary_unary(path, request_serializer=serialize, response_deserializer=deserialize)(
                    request, metadata=metadata, timeout=10
                )
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


@pytest.fixture(scope="module")
def public_key(running: RunningStack) -> Iterator[str]:
    """A key of role public, made by an operator (the local stack makes none)."""
    with grpc.insecure_channel(running.gateway) as channel:
        created = gateway_pb2_grpc.GatewayServiceStub(channel).CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(display_name="a public key", role=common_pb2.ROLE_PUBLIC),
            metadata=bearer(running.description["development_api_keys"]["operator"]),
            timeout=10,
        )
    yield created.secret


class TestTheTable:
    def test_only_the_complaint_entrance_and_the_public_proofs_are_open_to_anyone(self) -> None:
        assert {path_of(m) for m in METHODS if ACCESS.allows_anonymous(path_of(m))} == OPEN_TO_ANYONE

    def test_the_public_role_reaches_nothing_else(self) -> None:
        public = {path_of(m) for m in METHODS if Role.PUBLIC in (e.roles if (e := ACCESS.entry(path_of(m))) else ())}
        assert public <= OPEN_TO_ANYONE


class TestThroughTheGateway:
    @pytest.mark.parametrize("method", METHODS, ids=[m.full_name for m in METHODS])
    def test_a_keyless_caller_reaches_only_what_is_open_to_anyone(
        self, running: RunningStack, method: MethodDescriptor
    ) -> None:
        code = code_of(running.gateway, method, [])
        if path_of(method) in OPEN_TO_ANYONE:
            assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), code
        else:
            assert code is grpc.StatusCode.UNAUTHENTICATED, code

    @pytest.mark.parametrize("method", METHODS, ids=[m.full_name for m in METHODS])
    @pytest.mark.parametrize("role", ["public", "provider", "regulator", "operator"])
    def test_a_role_the_table_does_not_list_is_refused_before_validation(
        self, running: RunningStack, public_key: str, method: MethodDescriptor, role: str
    ) -> None:
        entry = ACCESS.entry(path_of(method))
        assert entry is not None, f"{path_of(method)} has no entry in the authorisation table"
        allowed = Role(role) in entry.roles or (role == "public" and entry.anonymous)
        key = public_key if role == "public" else running.description["development_api_keys"][role]
        code = code_of(running.gateway, method, bearer(key))
        if allowed:
            assert code is not grpc.StatusCode.UNAUTHENTICATED, code
        else:
            assert code is grpc.StatusCode.PERMISSION_DENIED, code

    @pytest.mark.parametrize("path", ONCE_REACHED_BY_THE_PUBLIC_KEY)
    def test_the_public_key_no_longer_gets_past_the_door(
        self, running: RunningStack, public_key: str, path: str
    ) -> None:
        (method,) = [m for m in METHODS if path_of(m) == path]
        assert code_of(running.gateway, method, bearer(public_key)) is grpc.StatusCode.PERMISSION_DENIED

    def test_health_without_a_key_says_serving_and_nothing_else(self, running: RunningStack) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(running.gateway) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply == health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class TestServiceTokens:
    """A compromised service signs what it likes with its own key; the receiving service decides
    by the connection it came over and by its table."""

    def token(self, stack: RunningStack, issuer: str, origin: Principal, audience: str, method: str) -> str:
        keys = pathlib.Path(stack.state_dir) / "keys"
        signer = TokenSigner(SigningKey(issuer, load_private_key(keys / f"{issuer}.key")))
        return signer.sign_as_service(origin, audience=audience, method=method)

    def call_identity(self, stack: RunningStack, method: str, token: str, acting_as: str) -> grpc.StatusCode:
        # Over the stack's mTLS, presenting the certificate of the process the test acts as.
        with service_channel(stack, "identity", acting_as) as channel:
            try:
                channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString())(
                    empty_pb2.Empty(), metadata=[(TOKEN_METADATA_KEY, token)], timeout=10
                )
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[attr-defined,no-any-return]
        return grpc.StatusCode.OK

    def test_a_service_cannot_act_as_an_operator(self, running: RunningStack) -> None:
        method = "/avgate.identity.v1.IdentityService/UnlockAccount"
        operator = Principal(role=Role.OPERATOR, subject="stolen")
        token = self.token(running, "complaints", operator, "identity", method)
        assert self.call_identity(running, method, token, "complaints") is grpc.StatusCode.PERMISSION_DENIED

    def test_a_service_cannot_call_what_the_table_does_not_give_it(self, running: RunningStack) -> None:
        method = "/avgate.identity.v1.IdentityService/RequestErasure"
        provider = Principal(role=Role.PROVIDER, subject="key-x", tenant_id="dev-tenant")
        token = self.token(running, "reporting", provider, "identity", method)
        assert self.call_identity(running, method, token, "reporting") is grpc.StatusCode.PERMISSION_DENIED

    def test_a_token_relayed_over_another_process_connection_is_refused(self, running: RunningStack) -> None:
        """screening may check eligibility for a provider; complaints, holding a token screening signed
        (stolen, or replayed from a log), cannot use it over its own connection."""
        method = "/avgate.identity.v1.IdentityService/CheckEligibility"
        provider = Principal(role=Role.PROVIDER, subject="key-x", tenant_id="dev-tenant")
        stolen = self.token(running, "screening", provider, "identity", method)
        assert self.call_identity(running, method, stolen, "complaints") is grpc.StatusCode.UNAUTHENTICATED
        fresh = self.token(running, "screening", provider, "identity", method)
        assert self.call_identity(running, method, fresh, "screening") is grpc.StatusCode.INVALID_ARGUMENT
