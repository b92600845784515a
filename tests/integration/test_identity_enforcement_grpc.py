"""Identity's accounts, publishing gate, enforcement ladder and eligibility
policy on the real identity server, on a real socket, with gateway-signed
principal tokens and a real PostgreSQL. The clock is injected: expiry and
night hours are reached by moving it, never by sleeping."""

from __future__ import annotations

import asyncio
import json
import pathlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from psycopg.rows import dict_row

from avgate.common.v1 import common_pb2
from avgate.identity.v1 import identity_pb2, identity_pb2_grpc
from avgate.kernel.db import create_engine_for, libpq_url
from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.principal import TOKEN_METADATA_KEY, Principal, Role, TokenSigner
from avgate.kernel.reporting_handoff import DESTINATION, decode_handoff
from avgate.reporting.v1 import reporting_pb2
from services.identity.__main__ import compose
from services.identity.config import IdentitySettings
from services.identity.expiry import EnforcementExpiry
from services.identity.service import IdentityService
from services.identity.store import SqlIdentityStore
from tests.conftest import Database
from tests.support import FakeClock, details, violated_fields

pytestmark = pytest.mark.db

SERVICE = "/avgate.identity.v1.IdentityService/"
START = datetime(2027, 3, 1, 4, 0, tzinfo=UTC)  # 12:00 in Asia/Shanghai
PUBLISH = identity_pb2.ACCOUNT_FUNCTION_PUBLISH
AUTHORITATIVE = "authoritatively_verified"


@dataclass
class Identity:
    stub: identity_pb2_grpc.IdentityServiceStub
    signer: TokenSigner
    database: Database
    clock: FakeClock
    keys_dir: pathlib.Path

    def auth(self, principal: Principal, method: str) -> tuple[tuple[str, str], ...]:
        return ((TOKEN_METADATA_KEY, self.signer.sign(principal, audience="identity", method=SERVICE + method)),)

    async def call(self, method: str, request: Any, principal: Principal) -> Any:
        return await getattr(self.stub, method)(request, metadata=self.auth(principal, method))

    async def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(libpq_url(self.database.admin_url)) as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query, params)
            rows = list(await cur.fetchall()) if cur.description else []
            await conn.commit()
            return rows


@pytest.fixture(scope="module")
async def identity(database: Database, keys_dir: pathlib.Path) -> AsyncIterator[Identity]:
    clock = FakeClock(START)
    settings = IdentitySettings(
        trusted_keys_dir=keys_dir,  # type: ignore[call-arg]
        generate_keys=False,  # type: ignore[call-arg]
        metrics_port=-1,
        grpc_port=0,
        database_url=database.url_for("identity"),
        dispatcher_enabled=False,  # these tests read the incidents waiting in the outbox
        expiry_enabled=False,  # the tests run the expiry job themselves, with the injected clock
    )
    process: GrpcProcess = await compose(settings, clock=clock)
    await process.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{process.port}")
    signer = TokenSigner(SigningKey("gateway", load_private_key(keys_dir / "gateway.key")))
    try:
        yield Identity(identity_pb2_grpc.IdentityServiceStub(channel), signer, database, clock, keys_dir)
    finally:
        await channel.close()
        await process.stop()


@pytest.fixture(autouse=True)
def reset_clock(identity: Identity) -> None:
    identity.clock.now = START


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def provider(tenant: str) -> Principal:
    return Principal(role=Role.PROVIDER, subject=f"key-{tenant}", tenant_id=tenant, request_id="req-1")


OPERATOR = Principal(role=Role.OPERATOR, subject="ops-1")


def user(tenant: str, user_id: str = "u-1") -> common_pb2.UserRef:
    return common_pb2.UserRef(tenant_id=tenant, user_id=user_id)


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(value)
    return t


def issue_request(tenant: str, user_id: str = "u-1", **changes: Any) -> identity_pb2.IssueEnforcementActionRequest:
    fields: dict[str, Any] = {
        "idempotency_key": f"k-{uuid.uuid4().hex[:10]}",
        "user": user(tenant, user_id),
        "type": identity_pb2.ENFORCEMENT_ACTION_TYPE_ACCOUNT_CLOSURE,
        "reason": "Repeatedly published prohibited content after warnings.",
        "legal_basis": [common_pb2.LegalBasis(instrument="NAVIS-2019", article="14")],
        "evidence_incident_ids": ["inc0123"],
        "decided_by": "staff-7",
    }
    fields.update(changes)
    return identity_pb2.IssueEnforcementActionRequest(**fields)


async def verified(identity: Identity, tenant: str, user_id: str = "u-1", **columns: Any) -> None:
    """An account at the highest level (what the verification step will record)."""
    values = {"verification_level": AUTHORITATIVE, **columns}
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    await identity.sql(
        f"insert into identity.accounts (tenant_id, user_id, {names}, create_time, update_time) "
        f"values (%s, %s, {marks}, now(), now()) on conflict (tenant_id, user_id) do update set "
        + ", ".join(f"{n} = excluded.{n}" for n in values),
        tenant,
        user_id,
        *values.values(),
    )


async def check(identity: Identity, tenant: str, function: int = PUBLISH, user_id: str = "u-1") -> Any:
    return await identity.call(
        "CheckEligibility",
        identity_pb2.CheckEligibilityRequest(user=user(tenant, user_id), action=function),
        provider(tenant),
    )


def codes(answer: Any) -> set[int]:
    return {r.code for r in answer.reasons}


def reason_of(error: grpc.aio.AioRpcError) -> str:
    (info,) = details(error, error_details_pb2.ErrorInfo)
    return str(info.reason)


async def ledger_entries(identity: Identity, subject_id: str) -> list[dict[str, Any]]:
    rows = await identity.sql("select payload from ledger.queue order by queue_id")
    entries = [json.loads(bytes(r["payload"])) for r in rows]
    return [e for e in entries if e["subject"]["id"] == subject_id]


async def incidents(identity: Identity, action_id: str) -> list[reporting_pb2.IncidentInput]:
    rows = await identity.sql("select destination, payload from identity.outbox order by id")
    found = []
    for row in rows:
        assert row["destination"] == DESTINATION
        request = reporting_pb2.CreateIncidentRequest.FromString(decode_handoff(bytes(row["payload"])).request)
        if request.incident.action.enforcement_action_id == action_id:
            found.append(request.incident)
    return found


# --------------------------------------------------------------------------- the gate


class TestPublishingGate:
    async def test_unknown_user_cannot_publish_until_verified(self, identity: Identity, tenant: str) -> None:
        answer = await check(identity, tenant)
        assert not answer.allowed
        (reason,) = answer.reasons
        assert reason.code == identity_pb2.INELIGIBILITY_CODE_VERIFICATION_LEVEL_TOO_LOW
        assert reason.required_level == identity_pb2.VERIFICATION_LEVEL_AUTHORITATIVELY_VERIFIED
        assert reason.legal_basis.article == "8"
        await verified(identity, tenant)
        assert (await check(identity, tenant)).allowed

    async def test_phone_verified_user_is_below_the_default_level(self, identity: Identity, tenant: str) -> None:
        await verified(identity, tenant, verification_level="phone_verified")
        assert codes(await check(identity, tenant)) == {identity_pb2.INELIGIBILITY_CODE_VERIFICATION_LEVEL_TOO_LOW}

    async def test_screening_asks_for_its_provider(self, identity: Identity, tenant: str) -> None:
        await verified(identity, tenant)
        screening = TokenSigner(SigningKey("screening", load_private_key(identity.keys_dir / "screening.key")))
        token = screening.sign_as_service(provider(tenant), audience="identity", method=SERVICE + "CheckEligibility")
        answer = await identity.stub.CheckEligibility(
            identity_pb2.CheckEligibilityRequest(user=user(tenant), action=PUBLISH),
            metadata=((TOKEN_METADATA_KEY, token),),
        )
        assert answer.allowed
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            token = screening.sign_as_service(
                provider("other-tenant"), audience="identity", method=SERVICE + "CheckEligibility"
            )
            await identity.stub.CheckEligibility(
                identity_pb2.CheckEligibilityRequest(user=user(tenant), action=PUBLISH),
                metadata=((TOKEN_METADATA_KEY, token),),
            )
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED

    async def test_closed_account_cannot_publish_and_a_lifted_closure_restores_it(
        self, identity: Identity, tenant: str
    ) -> None:
        await verified(identity, tenant)
        issued = await identity.call("IssueEnforcementAction", issue_request(tenant), provider(tenant))
        assert issued.account.status == identity_pb2.ACCOUNT_STATUS_CLOSED
        answer = await check(identity, tenant, identity_pb2.ACCOUNT_FUNCTION_DIRECT_MESSAGE)
        assert [r.code for r in answer.reasons] == [identity_pb2.INELIGIBILITY_CODE_ACCOUNT_CLOSED]
        assert answer.reasons[0].enforcement_action_id == issued.action.action_id
        lifted = await identity.call(
            "LiftEnforcementAction",
            identity_pb2.LiftEnforcementActionRequest(
                idempotency_key="lift-1",
                action_id=issued.action.action_id,
                kind=identity_pb2.LIFT_KIND_REVERSE,
                reason="Appeal upheld: the content was misclassified.",
                decided_by="staff-9",
                appeal_reference="cmp-42",
            ),
            provider(tenant),
        )
        assert lifted.action.state == identity_pb2.ENFORCEMENT_ACTION_STATE_REVERSED
        assert lifted.account.status == identity_pb2.ACCOUNT_STATUS_ACTIVE
        assert (await check(identity, tenant)).allowed
        rows = await identity.sql(
            "select status from identity.accounts where tenant_id = %s and user_id = 'u-1'", tenant
        )
        assert rows == [{"status": "active"}]

    async def test_suspension_blocks_updating_only_and_ends_at_its_until_time(
        self, identity: Identity, tenant: str
    ) -> None:
        await verified(identity, tenant)
        until = START + timedelta(days=7)
        issued = await identity.call(
            "IssueEnforcementAction",
            issue_request(
                tenant, type=identity_pb2.ENFORCEMENT_ACTION_TYPE_SUSPENSION_OF_UPDATING, until_time=ts(until)
            ),
            provider(tenant),
        )
        assert issued.account.status == identity_pb2.ACCOUNT_STATUS_SUSPENDED
        for function in (PUBLISH, identity_pb2.ACCOUNT_FUNCTION_LIVE_STREAM, identity_pb2.ACCOUNT_FUNCTION_COMMENT):
            answer = await check(identity, tenant, function)
            assert codes(answer) == {identity_pb2.INELIGIBILITY_CODE_UPDATING_SUSPENDED}
            assert answer.reasons[0].until_time.ToDatetime(tzinfo=UTC) == until
        assert (await check(identity, tenant, identity_pb2.ACCOUNT_FUNCTION_DIRECT_MESSAGE)).allowed
        identity.clock.now = until + timedelta(seconds=1)
        # Past its end the gate no longer counts it, even before the expiry job has recorded the end.
        assert (await check(identity, tenant)).allowed

    async def test_function_restriction_blocks_only_the_listed_functions(self, identity: Identity, tenant: str) -> None:
        await verified(identity, tenant)
        await identity.call(
            "IssueEnforcementAction",
            issue_request(
                tenant,
                type=identity_pb2.ENFORCEMENT_ACTION_TYPE_FUNCTION_RESTRICTION,
                restricted_functions=[identity_pb2.ACCOUNT_FUNCTION_COMMENT, identity_pb2.ACCOUNT_FUNCTION_TIPPING],
                until_time=ts(START + timedelta(days=1)),
            ),
            provider(tenant),
        )
        assert codes(await check(identity, tenant, identity_pb2.ACCOUNT_FUNCTION_COMMENT)) == {
            identity_pb2.INELIGIBILITY_CODE_FUNCTION_RESTRICTED
        }
        assert (await check(identity, tenant)).allowed

    async def test_every_reason_is_returned(self, identity: Identity, tenant: str) -> None:
        await identity.call("IssueEnforcementAction", issue_request(tenant), provider(tenant))
        assert codes(await check(identity, tenant)) == {
            identity_pb2.INELIGIBILITY_CODE_ACCOUNT_CLOSED,
            identity_pb2.INELIGIBILITY_CODE_VERIFICATION_LEVEL_TOO_LOW,
        }

    async def test_action_must_be_named(self, identity: Identity, tenant: str) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await check(identity, tenant, identity_pb2.ACCOUNT_FUNCTION_UNSPECIFIED)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(refused.value) == {"action"}


class TestMinorsRules:
    @staticmethod
    def turning_18_in(years: int) -> date:
        return date(START.year + years, 6, 1)

    async def test_under_16_cannot_live_stream_but_may_publish_by_day(self, identity: Identity, tenant: str) -> None:
        await verified(identity, tenant, minor_until=self.turning_18_in(3))  # 14 or 15 years old
        answer = await check(identity, tenant, identity_pb2.ACCOUNT_FUNCTION_LIVE_STREAM)
        assert identity_pb2.INELIGIBILITY_CODE_MINOR_RESTRICTED in codes(answer)
        assert (await check(identity, tenant)).allowed
        account = await identity.call("GetAccount", identity_pb2.GetAccountRequest(user=user(tenant)), provider(tenant))
        assert account.account.minor
        assert account.account.age_years == 14

    @pytest.mark.parametrize(
        ("utc_hour", "allowed"),
        [(13, True), (14, False), (21, False), (22, True)],
        ids=["21h-local", "22h-local", "05h-local", "06h-local"],
    )
    async def test_minor_cannot_publish_at_night_in_shanghai(
        self, identity: Identity, tenant: str, utc_hour: int, allowed: bool
    ) -> None:
        await verified(identity, tenant, minor_until=self.turning_18_in(1))
        identity.clock.now = START.replace(hour=utc_hour)
        answer = await check(identity, tenant)
        assert answer.allowed is allowed
        if not allowed:
            assert codes(answer) == {identity_pb2.INELIGIBILITY_CODE_MINOR_NIGHT_HOURS}
            # The night ends at 06:00 Shanghai, 22:00 UTC.
            assert answer.reasons[0].until_time.ToDatetime(tzinfo=UTC).hour == 22

    async def test_adult_may_publish_at_night(self, identity: Identity, tenant: str) -> None:
        await verified(identity, tenant)
        identity.clock.now = START.replace(hour=16)
        assert (await check(identity, tenant)).allowed

    async def test_under_14_needs_a_guardian_consent(self, identity: Identity, tenant: str) -> None:
        await verified(identity, tenant, minor_until=self.turning_18_in(5))
        assert identity_pb2.INELIGIBILITY_CODE_GUARDIAN_CONSENT_MISSING in codes(
            await check(identity, tenant, identity_pb2.ACCOUNT_FUNCTION_COMMENT)
        )
        await verified(identity, tenant, minor_until=self.turning_18_in(5), guardian_consent_recorded=True)
        assert (await check(identity, tenant, identity_pb2.ACCOUNT_FUNCTION_COMMENT)).allowed


# --------------------------------------------------------------------------- the ladder


class TestIssuing:
    async def test_issue_writes_its_ledger_entry_and_hands_an_incident_to_reporting(
        self, identity: Identity, tenant: str
    ) -> None:
        issued = await identity.call("IssueEnforcementAction", issue_request(tenant), provider(tenant))
        action = issued.action
        assert action.state == identity_pb2.ENFORCEMENT_ACTION_STATE_ACTIVE
        assert action.issued_by_subject == f"key-{tenant}"
        (entry,) = await ledger_entries(identity, action.action_id)
        assert entry["action"] == "enforcement.issue"
        assert entry["tenant"] == tenant
        assert entry["basis"] == "NAVIS-2019 Art. 14"
        (incident,) = await incidents(identity, action.action_id)
        assert incident.category == reporting_pb2.INCIDENT_CATEGORY_ENFORCEMENT_ACTION
        assert incident.source == reporting_pb2.INCIDENT_SOURCE_IDENTITY
        assert incident.external_id == f"{action.action_id}:issue"
        assert incident.action.type == common_pb2.ACTION_TYPE_ACCOUNT_CLOSURE
        assert incident.user.user_id == "u-1"
        assert [r.id for r in incident.related] == ["inc0123"]

    async def test_retry_with_the_same_key_returns_the_same_action_once(self, identity: Identity, tenant: str) -> None:
        request = issue_request(tenant)
        first = await identity.call("IssueEnforcementAction", request, provider(tenant))
        identity.clock.now = START + timedelta(minutes=5)
        again = await identity.call("IssueEnforcementAction", request, provider(tenant))
        assert again.action == first.action
        assert len(await ledger_entries(identity, first.action.action_id)) == 1
        assert len(await incidents(identity, first.action.action_id)) == 1

    async def test_same_key_with_other_content_is_an_idempotency_conflict(
        self, identity: Identity, tenant: str
    ) -> None:
        request = issue_request(tenant)
        await identity.call("IssueEnforcementAction", request, provider(tenant))
        request.reason = "Another reason."
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.call("IssueEnforcementAction", request, provider(tenant))
        assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
        assert reason_of(refused.value) == "ERROR_REASON_IDEMPOTENCY_CONFLICT"

    @pytest.mark.parametrize(
        ("changes", "fields"),
        [
            ({"type": identity_pb2.ENFORCEMENT_ACTION_TYPE_FUNCTION_RESTRICTION}, {"restricted_functions"}),
            ({"restricted_functions": [identity_pb2.ACCOUNT_FUNCTION_COMMENT]}, {"restricted_functions"}),
            ({"until_time": ts(START + timedelta(days=1))}, {"until_time"}),
            (
                {
                    "type": identity_pb2.ENFORCEMENT_ACTION_TYPE_SUSPENSION_OF_UPDATING,
                    "until_time": ts(START - timedelta(days=1)),
                },
                {"until_time"},
            ),
            ({"reason": "", "legal_basis": []}, {"reason", "legal_basis"}),
            ({"reason": "User 13812345678 posted it."}, {"reason"}),
            ({"decided_by": "", "idempotency_key": ""}, {"decided_by", "idempotency_key"}),
            ({"type": identity_pb2.ENFORCEMENT_ACTION_TYPE_UNSPECIFIED}, {"type"}),
        ],
        ids=[
            "restriction-without-functions",
            "functions-on-a-closure",
            "closure-with-an-end",
            "end-in-the-past",
            "no-reason-no-basis",
            "phone-number-in-reason",
            "no-decider-no-key",
            "no-type",
        ],
    )
    async def test_bad_request_names_the_fields_and_stores_nothing(
        self, identity: Identity, tenant: str, changes: dict[str, Any], fields: set[str]
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.call("IssueEnforcementAction", issue_request(tenant, **changes), provider(tenant))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(refused.value) == fields
        assert "13812345678" not in (refused.value.details() or "")
        assert await identity.sql("select 1 from identity.enforcement_actions where tenant_id = %s", tenant) == []
        assert await identity.sql("select 1 from identity.accounts where tenant_id = %s", tenant) == []

    async def test_a_time_outside_what_a_timestamp_holds_names_the_field(self, identity: Identity, tenant: str) -> None:
        request = issue_request(tenant, type=identity_pb2.ENFORCEMENT_ACTION_TYPE_SUSPENSION_OF_UPDATING)
        request.until_time.seconds = 253_402_300_800  # 10000-01-01T00:00:00Z
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.call("IssueEnforcementAction", request, provider(tenant))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(refused.value) == {"until_time"}

    async def test_lift_writes_ledger_and_incident_and_only_active_actions_can_be_lifted(
        self, identity: Identity, tenant: str
    ) -> None:
        issued = await identity.call(
            "IssueEnforcementAction",
            issue_request(tenant, type=identity_pb2.ENFORCEMENT_ACTION_TYPE_WARNING),
            provider(tenant),
        )
        lift = identity_pb2.LiftEnforcementActionRequest(
            idempotency_key="lift-a",
            action_id=issued.action.action_id,
            kind=identity_pb2.LIFT_KIND_LIFT,
            reason="Warning withdrawn.",
            decided_by="staff-2",
        )
        lifted = await identity.call("LiftEnforcementAction", lift, provider(tenant))
        assert lifted.action.state == identity_pb2.ENFORCEMENT_ACTION_STATE_LIFTED
        assert lifted.action.end_reason == "Warning withdrawn."
        again = await identity.call("LiftEnforcementAction", lift, provider(tenant))
        assert again.action == lifted.action
        lift.idempotency_key = "lift-b"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.call("LiftEnforcementAction", lift, provider(tenant))
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        actions = [e["action"] for e in await ledger_entries(identity, issued.action.action_id)]
        assert actions == ["enforcement.issue", "enforcement.lift"]
        found = await incidents(identity, issued.action.action_id)
        assert [i.external_id.rsplit(":", 1)[1] for i in found] == ["issue", "lift"]
        assert found[1].action.type == common_pb2.ACTION_TYPE_ENFORCEMENT_LIFTED

    async def test_history_is_listed_newest_first_with_filters_and_pages(self, identity: Identity, tenant: str) -> None:
        ids = []
        for minute in range(3):
            identity.clock.now = START + timedelta(minutes=minute)
            issued = await identity.call(
                "IssueEnforcementAction",
                issue_request(tenant, type=identity_pb2.ENFORCEMENT_ACTION_TYPE_WARNING),
                provider(tenant),
            )
            ids.append(issued.action.action_id)
        first = await identity.call(
            "ListEnforcementActions",
            identity_pb2.ListEnforcementActionsRequest(user=user(tenant), page=common_pb2.PageRequest(page_size=2)),
            provider(tenant),
        )
        second = await identity.call(
            "ListEnforcementActions",
            identity_pb2.ListEnforcementActionsRequest(
                user=user(tenant), page=common_pb2.PageRequest(page_size=2, page_token=first.page.next_page_token)
            ),
            provider(tenant),
        )
        assert [a.action_id for a in (*first.actions, *second.actions)] == ids[::-1]
        assert second.page.next_page_token == ""
        closures = await identity.call(
            "ListEnforcementActions",
            identity_pb2.ListEnforcementActionsRequest(
                user=user(tenant), types=[identity_pb2.ENFORCEMENT_ACTION_TYPE_ACCOUNT_CLOSURE]
            ),
            provider(tenant),
        )
        assert list(closures.actions) == []


class TestExpiry:
    async def test_two_concurrent_runs_expire_each_action_exactly_once(self, identity: Identity, tenant: str) -> None:
        await verified(identity, tenant)
        ids = []
        for n in range(6):
            issued = await identity.call(
                "IssueEnforcementAction",
                issue_request(
                    tenant,
                    user_id=f"u-{n % 3}",
                    type=identity_pb2.ENFORCEMENT_ACTION_TYPE_SUSPENSION_OF_UPDATING,
                    until_time=ts(START + timedelta(hours=1 + n)),
                ),
                provider(tenant),
            )
            ids.append(issued.action.action_id)
        assert not (await check(identity, tenant)).allowed
        clock = FakeClock(START + timedelta(days=1))
        # Other tests' actions in this module's database may fall due too: count them all.
        (due,) = await identity.sql(
            "select count(*) as n from identity.enforcement_actions where state = 'active' and until_time <= %s",
            clock.now,
        )
        assert due["n"] >= 6
        engines = [create_engine_for(identity.database.url_for("identity"), pool_size=2) for _ in range(2)]
        try:
            jobs = [EnforcementExpiry(IdentityService(SqlIdentityStore(e), clock=clock), batch_size=2) for e in engines]
            counts = await asyncio.gather(*(job.run_once() for job in jobs))
            assert sum(counts) == due["n"]  # each due action expired by exactly one of the runs
            assert await jobs[0].run_once() == 0
        finally:
            for e in engines:
                await e.dispose()
        for action_id in ids:
            got = await identity.call(
                "GetEnforcementAction", identity_pb2.GetEnforcementActionRequest(action_id=action_id), provider(tenant)
            )
            assert got.action.state == identity_pb2.ENFORCEMENT_ACTION_STATE_EXPIRED
            assert got.action.end_time == got.action.until_time
            assert [e["action"] for e in await ledger_entries(identity, action_id)] == [
                "enforcement.issue",
                "enforcement.expire",
            ]
            expired = [i for i in await incidents(identity, action_id) if i.external_id.endswith(":expire")]
            assert len(expired) == 1
            assert expired[0].category == reporting_pb2.INCIDENT_CATEGORY_ENFORCEMENT_ACTION
        statuses = await identity.sql("select distinct status from identity.accounts where tenant_id = %s", tenant)
        assert statuses == [{"status": "active"}]
        assert (await check(identity, tenant)).allowed


# --------------------------------------------------------------------------- tenants, unlock, policy


class TestTenantIsolation:
    async def test_a_provider_cannot_name_another_tenants_user(self, identity: Identity, tenant: str) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.call("IssueEnforcementAction", issue_request(tenant), provider("other-tenant"))
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.call(
                "GetAccount", identity_pb2.GetAccountRequest(user=user(tenant)), provider("other-tenant")
            )
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED

    async def test_another_tenants_action_is_not_found(self, identity: Identity, tenant: str) -> None:
        issued = await identity.call("IssueEnforcementAction", issue_request(tenant), provider(tenant))
        for method, request in (
            ("GetEnforcementAction", identity_pb2.GetEnforcementActionRequest(action_id=issued.action.action_id)),
            (
                "LiftEnforcementAction",
                identity_pb2.LiftEnforcementActionRequest(
                    idempotency_key="x",
                    action_id=issued.action.action_id,
                    kind=identity_pb2.LIFT_KIND_LIFT,
                    reason="r",
                    decided_by="d",
                ),
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await identity.call(method, request, provider("other-tenant"))
            assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        operator_view = await identity.call(
            "GetEnforcementAction",
            identity_pb2.GetEnforcementActionRequest(action_id=issued.action.action_id),
            OPERATOR,
        )
        assert operator_view.action.user.tenant_id == tenant


class TestUnlock:
    async def test_unlock_clears_the_lockout_and_is_ledgered(self, identity: Identity, tenant: str) -> None:
        await verified(identity, tenant, lockout_until=START + timedelta(hours=1), lockout_level=2, failed_attempts=5)
        before = await identity.call("GetAccount", identity_pb2.GetAccountRequest(user=user(tenant)), provider(tenant))
        assert before.account.lockout.level == 2
        unlocked = await identity.call(
            "UnlockAccount",
            identity_pb2.UnlockAccountRequest(user=user(tenant), reason="Verified by support call."),
            OPERATOR,
        )
        assert not unlocked.account.HasField("lockout")
        (entry,) = await ledger_entries(identity, f"{tenant}/u-1")
        assert entry["action"] == "account.unlock"
        assert entry["actor"]["role"] == "operator"


class TestEligibilityPolicy:
    async def test_defaults_then_update_with_etag(self, identity: Identity, tenant: str) -> None:
        got = await identity.call("GetEligibilityPolicy", identity_pb2.GetEligibilityPolicyRequest(), provider(tenant))
        policy = got.policy
        assert policy.tenant_id == tenant
        assert policy.default_required_level == identity_pb2.VERIFICATION_LEVEL_AUTHORITATIVELY_VERIFIED
        assert policy.time_zone == "Asia/Shanghai"
        policy.function_requirements.append(
            identity_pb2.FunctionRequirement(
                function=PUBLISH, required_level=identity_pb2.VERIFICATION_LEVEL_PHONE_VERIFIED
            )
        )
        updated = await identity.call(
            "UpdateEligibilityPolicy",
            identity_pb2.UpdateEligibilityPolicyRequest(
                policy=policy, update_mask=field_mask_pb2.FieldMask(paths=["function_requirements"])
            ),
            provider(tenant),
        )
        assert updated.policy.etag != policy.etag
        assert updated.policy.night_window == policy.night_window
        await verified(identity, tenant, verification_level="phone_verified")
        answer = await check(identity, tenant)
        assert answer.allowed
        assert answer.policy_etag == updated.policy.etag
        assert not (await check(identity, tenant, identity_pb2.ACCOUNT_FUNCTION_COMMENT)).allowed
        (entry,) = await ledger_entries(identity, tenant)
        assert entry["action"] == "eligibility_policy.update"

    async def test_stale_etag_is_refused(self, identity: Identity, tenant: str) -> None:
        policy = (
            await identity.call("GetEligibilityPolicy", identity_pb2.GetEligibilityPolicyRequest(), provider(tenant))
        ).policy
        mask = field_mask_pb2.FieldMask(paths=["one_identity_per_account"])
        policy.one_identity_per_account = True
        request = identity_pb2.UpdateEligibilityPolicyRequest(policy=policy, update_mask=mask)
        await identity.call("UpdateEligibilityPolicy", request, provider(tenant))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.call("UpdateEligibilityPolicy", request, provider(tenant))
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION

    @pytest.mark.parametrize(
        ("paths", "changes", "field"),
        [
            (["bogus"], {}, "update_mask.paths[0]"),
            (["time_zone"], {"time_zone": "Mars/Olympus"}, "policy.time_zone"),
            (
                ["night_window"],
                {"night_window": identity_pb2.NightWindow(start_minute=1500, end_minute=10)},
                "policy.night_window.start_minute",
            ),
            (["default_required_level"], {"default_required_level": 0}, "policy.default_required_level"),
        ],
        ids=["unknown-path", "unknown-zone", "minute-out-of-range", "no-level"],
    )
    async def test_bad_policy_names_the_field(
        self, identity: Identity, tenant: str, paths: list[str], changes: dict[str, Any], field: str
    ) -> None:
        policy = identity_pb2.EligibilityPolicy(**changes)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.call(
                "UpdateEligibilityPolicy",
                identity_pb2.UpdateEligibilityPolicyRequest(
                    policy=policy, update_mask=field_mask_pb2.FieldMask(paths=paths)
                ),
                provider(tenant),
            )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field in violated_fields(refused.value)


class TestActionsIssuedForLater:
    async def test_the_stored_status_follows_when_an_action_starts_with_its_ledger_entry(
        self, identity: Identity, tenant: str
    ) -> None:
        await verified(identity, tenant)
        issued = await identity.call(
            "IssueEnforcementAction",
            issue_request(
                tenant,
                type=identity_pb2.ENFORCEMENT_ACTION_TYPE_SUSPENSION_OF_UPDATING,
                start_time=ts(START + timedelta(hours=2)),
                until_time=ts(START + timedelta(days=3)),
            ),
            provider(tenant),
        )
        assert issued.action.state == identity_pb2.ENFORCEMENT_ACTION_STATE_ACTIVE

        async def stored_status() -> str:
            (row,) = await identity.sql(
                "select status from identity.accounts where tenant_id = %s and user_id = 'u-1'", tenant
            )
            return str(row["status"])

        assert await stored_status() == "active"  # not yet started
        engine = create_engine_for(identity.database.url_for("identity"), pool_size=2)
        try:
            early = EnforcementExpiry(
                IdentityService(SqlIdentityStore(engine), clock=FakeClock(START + timedelta(hours=1)))
            )
            await early.run_once()
            assert await stored_status() == "active"
            later = EnforcementExpiry(
                IdentityService(SqlIdentityStore(engine), clock=FakeClock(START + timedelta(hours=3)))
            )
            await later.run_once()
            assert await stored_status() == "suspended"
            await later.run_once()  # worked out once: no second entry
        finally:
            await engine.dispose()
        changes = [e for e in await ledger_entries(identity, f"{tenant}/u-1") if e["action"] == "account.status"]
        assert [(e["data"]["from"], e["data"]["to"]) for e in changes] == [("active", "suspended")]
