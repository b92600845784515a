"""The authorisation table's decisions (avgate.kernel.grpc.access), on a table built by hand."""

from __future__ import annotations

import pytest

from avgate.kernel.errors import PermissionDenied, Unauthenticated
from avgate.kernel.grpc.access import AccessTable, MethodAccess
from avgate.kernel.principal import Principal, Role

READ = "/avgate.test.v1.Things/GetThing"
OPEN = "/avgate.test.v1.Things/ListPublicThings"
HANDOFF = "/avgate.test.v1.Things/CreateThing"
UNLISTED = "/avgate.test.v1.Things/DropEverything"

TABLE = AccessTable(
    {
        READ: MethodAccess(roles=frozenset({Role.PROVIDER, Role.OPERATOR})),
        OPEN: MethodAccess(roles=frozenset({Role.REGULATOR}), anonymous=True),
        HANDOFF: MethodAccess(
            roles=frozenset({Role.PROVIDER}),
            service_callers={"identity": frozenset({Role.PROVIDER, Role.SERVICE})},
        ),
    }
)
PROVIDER = Principal(role=Role.PROVIDER, subject="key-a", tenant_id="acme")
OPERATOR = Principal(role=Role.OPERATOR, subject="ops")


def service(name: str, origin: Principal | None) -> Principal:
    return Principal(role=Role.SERVICE, subject=name, origin=origin)


class TestOutsideCallers:
    def test_a_listed_role_passes(self) -> None:
        assert TABLE.check_outside(READ, Role.OPERATOR) is TABLE.entry(READ)

    @pytest.mark.parametrize("role", [Role.REGULATOR, Role.PUBLIC], ids=["regulator", "public"])
    def test_an_unlisted_role_is_permission_denied(self, role: Role) -> None:
        with pytest.raises(PermissionDenied):
            TABLE.check_outside(READ, role)

    def test_no_key_is_unauthenticated_where_a_key_is_needed(self) -> None:
        with pytest.raises(Unauthenticated):
            TABLE.check_outside(READ, None)

    def test_no_key_passes_where_the_method_is_open_to_anyone(self) -> None:
        TABLE.check_outside(OPEN, None)
        TABLE.check_outside(OPEN, Role.PUBLIC)

    @pytest.mark.parametrize("role", [None, Role.OPERATOR], ids=["keyless", "operator"])
    def test_a_method_without_an_entry_is_denied_to_everyone(self, role: Role | None) -> None:
        with pytest.raises(PermissionDenied):
            TABLE.check_outside(UNLISTED, role)


class TestTokens:
    def test_a_gateway_token_follows_the_role_rule(self) -> None:
        TABLE.check_token(READ, PROVIDER)
        with pytest.raises(PermissionDenied):
            TABLE.check_token(HANDOFF, OPERATOR)

    def test_a_listed_service_may_act_for_a_listed_origin_role(self) -> None:
        TABLE.check_token(HANDOFF, service("identity", PROVIDER))

    def test_a_listed_service_may_not_act_for_another_role(self) -> None:
        with pytest.raises(PermissionDenied, match="acting for role operator"):
            TABLE.check_token(HANDOFF, service("identity", OPERATOR))

    def test_an_unlisted_service_is_denied(self) -> None:
        with pytest.raises(PermissionDenied, match="service complaints may not call"):
            TABLE.check_token(HANDOFF, service("complaints", PROVIDER))

    def test_a_service_is_denied_where_only_outside_roles_are_listed(self) -> None:
        with pytest.raises(PermissionDenied):
            TABLE.check_token(READ, service("identity", PROVIDER))

    def test_the_origin_is_the_end_of_the_chain_of_services(self) -> None:
        TABLE.check_token(HANDOFF, service("identity", service("screening", PROVIDER)))
        with pytest.raises(PermissionDenied):
            TABLE.check_token(HANDOFF, service("identity", service("screening", OPERATOR)))

    def test_a_service_acting_on_its_own_carries_itself(self) -> None:
        TABLE.check_token(HANDOFF, service("identity", None))


class TestTheContracts:
    def test_every_rpc_of_every_api_has_an_entry(self) -> None:
        table = AccessTable.from_contracts()
        assert table.entry("/avgate.reporting.v1.IncidentService/CreateIncident") is not None
        assert table.allows_anonymous("/avgate.complaints.v1.ComplaintsPublicService/SubmitComplaint")
        assert not table.allows_anonymous("/avgate.gateway.v1.GatewayService/CreateApiKey")
