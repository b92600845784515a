"""Identity's verification flows, consents and erasure on the real identity
server over a real socket, with gateway-signed principal tokens, a real
PostgreSQL, the real verifier stand-in server (answers from its test data),
the file SMS sink (codes read back from it) and an injected clock."""

from __future__ import annotations

import json
import logging
import pathlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, timedelta
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2

from avgate.identity.v1 import identity_pb2_grpc
from avgate.kernel.db import LEDGER_SEQUENCER_ROLE, libpq_url, role_url
from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.logging import json_formatter
from avgate.kernel.principal import TokenSigner
from avgate.ledger.checkpoint import NoteSigner
from avgate.ledger.verify import verify_database
from services.identity.__main__ import compose
from services.identity.config import IdentitySettings
from services.identity.vault import FieldDecryptionFailed, Vault, WrappedDataKey
from services.identity.verifier_standin import VerifierStandIn
from services.reporting.ledger.sequencer import Sequencer
from tests.conftest import Database
from tests.support import FakeClock, ServerLog, details, stored_rows, violated_fields
from tests.support.identity import (
    ADULT,
    ADULT_B,
    CHILD,
    DOWN,
    ORG,
    START,
    Env,
    V,
    complete,
    confirm,
    consent,
    key,
    national,
    provider,
    start,
    user,
    verify,
)

pytestmark = pytest.mark.db

CLEAR_VALUES = [
    "测试用户甲",
    "110101199003071233",
    "13800138000",
    "测试用户乙",
    "310104198511204567",
    "13900139001",
    "测试用户丙",
    "440305201506150219",
    "13700137002",
    "91110108MA01ABCD5T",
    "测试科技有限公司",
    "13500135004",
    # the verifier-unavailable path's person
    "测试用户戊",
    "51010719920229888X",
    "13600136003",
    # the forms a mobile number arrives in, and refused values
    "+86 138 0013 8000",
    "138 0013 8000",
    "+86 13800138000",
    "138 0013 800",
    "1380013800",
    "110101199003071234",
]


@pytest.fixture(scope="module")
async def env(
    database: Database, keys_dir: pathlib.Path, standin: VerifierStandIn, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("idflow")
    (tmp / "verifier.token").write_text("cr3d")
    clock = FakeClock(START)
    settings = IdentitySettings(
        trusted_keys_dir=keys_dir,  # type: ignore[call-arg]
        generate_keys=False,  # type: ignore[call-arg]
        metrics_port=-1,
        grpc_port=0,
        database_url=database.url_for("identity"),
        dispatcher_enabled=False,
        expiry_enabled=False,
        sms_sink_file=tmp / "sms.jsonl",
        verifier_url=f"http://127.0.0.1:{standin.server_address[1]}/",
        verifier_credentials_file=tmp / "verifier.token",
        verifier_max_attempts=1,
    )
    process: GrpcProcess = await compose(settings, clock=clock)
    await process.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{process.port}")
    signer = TokenSigner(SigningKey("gateway", load_private_key(keys_dir / "gateway.key")))
    try:
        yield Env(
            identity_pb2_grpc.IdentityServiceStub(channel),
            signer,
            database,
            clock,
            tmp / "sms.jsonl",
            standin,
            settings,
            [],
        )
    finally:
        await channel.close()
        await process.stop()


@pytest.fixture(autouse=True)
def reset_clock(env: Env) -> None:
    env.clock.now = START


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def ledger(env: Env, tenant: str) -> list[dict[str, Any]]:
    rows = await env.sql(
        "select convert_from(payload, 'UTF8') as doc from ledger.queue order by queue_id",
    )
    docs = [json.loads(r["doc"]) for r in rows]
    return [d for d in docs if d["tenant"] == tenant]


async def integrate_and_verify(env: Env, signer: NoteSigner) -> None:
    """Sequences the queued entries into the Merkle tree and verifies the whole ledger."""
    url = libpq_url(role_url(env.database.admin_url, LEDGER_SEQUENCER_ROLE))
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await Sequencer(url, signer, signer.name, batch_size=1000).integrate_once(conn)
    reporting = libpq_url(env.database.url_for("reporting"))
    async with await psycopg.AsyncConnection.connect(reporting) as conn:
        report = await verify_database(conn, workers=0)
    assert report.ok, report.problems
    assert report.entries_checked > 0


class TestTheFlow:
    async def test_an_individual_reaches_the_highest_level_and_may_publish(self, env: Env, tenant: str) -> None:
        await consent(env, tenant)
        flow = await start(env, tenant)
        assert flow.state == V.VERIFICATION_FLOW_STATE_AWAITING_CODE
        assert flow.level_reached == V.VERIFICATION_LEVEL_FORMAT_CHECKED
        assert flow.masked_id_number.masked == "110***********1233"
        assert flow.masked_mobile.masked == "+86 138****8000"
        assert flow.masked_name.masked == "测****"
        confirmed = await confirm(env, tenant, flow.flow_id, ADULT["mobile"])
        assert confirmed.flow.state == V.VERIFICATION_FLOW_STATE_CODE_CONFIRMED
        assert confirmed.flow.level_reached == V.VERIFICATION_LEVEL_PHONE_VERIFIED
        done = await complete(env, tenant, flow.flow_id)
        assert done.flow.state == V.VERIFICATION_FLOW_STATE_COMPLETED
        assert done.flow.level_reached == V.VERIFICATION_LEVEL_AUTHORITATIVELY_VERIFIED
        assert list(done.flow.methods) == [
            V.VERIFICATION_METHOD_FORMAT_CHECK,
            V.VERIFICATION_METHOD_SMS_CODE,
            V.VERIFICATION_METHOD_AUTHORITATIVE_SERVICE,
        ]
        assert done.account.verification_level == V.VERIFICATION_LEVEL_AUTHORITATIVELY_VERIFIED
        assert done.account.masked_id_number.masked == "110***********1233"
        assert not done.account.minor
        allowed = await env.call(
            "CheckEligibility",
            V.CheckEligibilityRequest(user=user(tenant), action=V.ACCOUNT_FUNCTION_PUBLISH),
            provider(tenant),
        )
        assert allowed.allowed
        actions = [e["action"] for e in await ledger(env, tenant)]
        assert actions == [
            "consent.record",
            "verification.start",
            "verification.code_sent",
            "verification.code_confirmed",
            "verification.complete",
        ]

    async def test_without_the_code_the_flow_completes_at_format_checked_and_cannot_publish(
        self, env: Env, tenant: str
    ) -> None:
        await consent(env, tenant)
        flow = await start(env, tenant)
        asked_before = env.standin.requests["/v1/individuals:verify"]
        done = await complete(env, tenant, flow.flow_id)
        assert done.account.verification_level == V.VERIFICATION_LEVEL_FORMAT_CHECKED
        # Without a confirmed code the authoritative verifier is not asked at all.
        assert env.standin.requests["/v1/individuals:verify"] == asked_before
        answer = await env.call(
            "CheckEligibility",
            V.CheckEligibilityRequest(user=user(tenant), action=V.ACCOUNT_FUNCTION_PUBLISH),
            provider(tenant),
        )
        assert not answer.allowed
        assert answer.reasons[0].code == V.INELIGIBILITY_CODE_VERIFICATION_LEVEL_TOO_LOW

    async def test_an_organisation_is_verified_by_credit_code(self, env: Env, tenant: str) -> None:
        await consent(env, tenant, "org-1")
        started = await env.call(
            "StartVerification",
            V.StartVerificationRequest(
                idempotency_key=key(),
                user=user(tenant, "org-1"),
                organization=V.OrganizationIdentity(**ORG, contact_mobile="13500135004"),
            ),
            provider(tenant),
        )
        await confirm(env, tenant, started.flow.flow_id, "13500135004")
        done = await complete(env, tenant, started.flow.flow_id)
        assert done.flow.subject_type == V.SUBJECT_TYPE_ORGANIZATION
        assert done.account.verification_level == V.VERIFICATION_LEVEL_AUTHORITATIVELY_VERIFIED
        assert done.flow.masked_id_number.masked == "91************CD5T"

    async def test_retried_start_returns_the_same_flow(self, env: Env, tenant: str) -> None:
        await consent(env, tenant)
        request = V.StartVerificationRequest(
            idempotency_key="same", user=user(tenant), individual=V.IndividualIdentity(**ADULT)
        )
        first = await env.call("StartVerification", request, provider(tenant))
        again = await env.call("StartVerification", request, provider(tenant))
        assert again.flow.flow_id == first.flow.flow_id


class TestBadInputStoresNothing:
    @pytest.mark.parametrize(
        ("field", "value", "path"),
        [
            ("resident_id_number", "110101199003071234", "individual.resident_id_number"),
            ("resident_id_number", "110101199002301237", "individual.resident_id_number"),
            ("resident_id_number", "000000199003071233", "individual.resident_id_number"),
            ("mobile", "12345", "individual.mobile"),
            ("name", "", "individual.name"),
        ],
        ids=["check-character", "impossible-date", "unknown-region", "mobile", "name"],
    )
    async def test_invalid_argument_names_the_field(
        self, env: Env, tenant: str, field: str, value: str, path: str
    ) -> None:
        await consent(env, tenant)
        before = stored_rows(env.database.admin_url, tenant, "identity")
        person = {**ADULT, field: value}
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await start(env, tenant, person)
        assert violated_fields(caught.value) == {path}
        if value:
            assert value not in (caught.value.details() or "")
        assert await env.sql("select 1 from identity.verification_flows where tenant_id = %s", tenant) == []
        assert stored_rows(env.database.admin_url, tenant, "identity") == before

    async def test_a_bad_credit_code_is_invalid(self, env: Env, tenant: str) -> None:
        await consent(env, tenant)
        before = stored_rows(env.database.admin_url, tenant, "identity")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.call(
                "StartVerification",
                V.StartVerificationRequest(
                    idempotency_key=key(),
                    user=user(tenant),
                    organization=V.OrganizationIdentity(
                        unified_social_credit_code="91110108MA01ABCD0C",
                        organization_name="测试科技有限公司",
                        contact_mobile="13500135004",
                    ),
                ),
                provider(tenant),
            )
        assert violated_fields(caught.value) == {"organization.unified_social_credit_code"}
        assert stored_rows(env.database.admin_url, tenant, "identity") == before

    async def test_start_needs_the_sensitive_information_consent(self, env: Env, tenant: str) -> None:
        before = stored_rows(env.database.admin_url, tenant, "identity")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await start(env, tenant)
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert await env.sql("select 1 from identity.verification_flows where tenant_id = %s", tenant) == []
        assert stored_rows(env.database.admin_url, tenant, "identity") == before


class TestCodes:
    async def test_an_expired_code_is_refused_and_a_used_one_cannot_be_reused(self, env: Env, tenant: str) -> None:
        await consent(env, tenant)
        flow = await start(env, tenant)
        await env.call("SendVerificationCode", V.SendVerificationCodeRequest(flow_id=flow.flow_id), provider(tenant))
        code = env.last_code(national(ADULT["mobile"]))
        env.clock.now += timedelta(seconds=301)
        late = await env.call(
            "ConfirmVerificationCode",
            V.ConfirmVerificationCodeRequest(flow_id=flow.flow_id, code=code),
            provider(tenant),
        )
        assert late.flow.state == V.VERIFICATION_FLOW_STATE_AWAITING_CODE
        assert late.remaining_attempts == 0
        ok = await confirm(env, tenant, flow.flow_id, ADULT["mobile"])
        assert ok.flow.state == V.VERIFICATION_FLOW_STATE_CODE_CONFIRMED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.call(
                "ConfirmVerificationCode",
                V.ConfirmVerificationCodeRequest(flow_id=flow.flow_id, code=env.last_code(national(ADULT["mobile"]))),
                provider(tenant),
            )
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION

    async def test_a_second_send_within_the_interval_is_rate_limited(self, env: Env, tenant: str) -> None:
        await consent(env, tenant)
        flow = await start(env, tenant, ADULT_B)
        first = await env.call(
            "SendVerificationCode", V.SendVerificationCodeRequest(flow_id=flow.flow_id), provider(tenant)
        )
        assert first.next_send_time.ToDatetime(tzinfo=UTC) == START + timedelta(seconds=60)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.call(
                "SendVerificationCode", V.SendVerificationCodeRequest(flow_id=flow.flow_id), provider(tenant)
            )
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        (retry,) = details(caught.value, error_details_pb2.RetryInfo)
        assert retry.retry_delay.seconds == 60

    async def test_repeated_wrong_codes_lock_out_the_address_until_unlocked(self, env: Env, tenant: str) -> None:
        await consent(env, tenant)
        flow = await start(env, tenant)
        await env.call("SendVerificationCode", V.SendVerificationCodeRequest(flow_id=flow.flow_id), provider(tenant))
        code = env.last_code(national(ADULT["mobile"]))
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        remaining = []
        for _ in range(5):
            answer = await env.call(
                "ConfirmVerificationCode",
                V.ConfirmVerificationCodeRequest(flow_id=flow.flow_id, code=wrong),
                provider(tenant),
            )
            remaining.append(answer.remaining_attempts)
        assert remaining == [4, 3, 2, 1, 0]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.call(
                "ConfirmVerificationCode",
                V.ConfirmVerificationCodeRequest(flow_id=flow.flow_id, code=code),
                provider(tenant),
            )
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        (retry,) = details(caught.value, error_details_pb2.RetryInfo)
        assert retry.retry_delay.seconds == 60
        # Another address (the real user elsewhere) is not locked out by these failures.
        env.clock.now += timedelta(seconds=61)
        elsewhere = await confirm(env, tenant, flow.flow_id, ADULT["mobile"], address="198.51.100.7")
        assert elsewhere.flow.state == V.VERIFICATION_FLOW_STATE_CODE_CONFIRMED
        unlocked = await env.call(
            "UnlockAccount", V.UnlockAccountRequest(user=user(tenant), reason="user called support"), provider(tenant)
        )
        assert not unlocked.account.HasField("lockout")
        assert (
            await env.sql(
                "select 1 from identity.verification_failures where tenant_id = %s and locked_until is not null", tenant
            )
            == []
        )


class TestVerifier:
    async def test_a_mismatch_fails_the_flow_and_leaves_the_account_unverified(self, env: Env, tenant: str) -> None:
        done = await verify(env, tenant, {**ADULT, "name": "测试冒名者"})
        assert done.flow.state == V.VERIFICATION_FLOW_STATE_FAILED
        assert done.flow.failure_reason == V.VERIFICATION_FAILURE_REASON_IDENTITY_MISMATCH
        assert done.account.verification_level == V.VERIFICATION_LEVEL_NONE

    async def test_unavailable_holds_the_flow_as_it_was(self, env: Env, tenant: str) -> None:
        await consent(env, tenant)
        flow = await start(env, tenant, DOWN)
        await confirm(env, tenant, flow.flow_id, DOWN["mobile"])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await complete(env, tenant, flow.flow_id)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        again = await env.call(
            "GetVerificationFlow", V.GetVerificationFlowRequest(flow_id=flow.flow_id), provider(tenant)
        )
        assert again.flow.state == V.VERIFICATION_FLOW_STATE_CODE_CONFIRMED
        account = await env.call("GetAccount", V.GetAccountRequest(user=user(tenant)), provider(tenant))
        assert account.account.verification_level == V.VERIFICATION_LEVEL_NONE


class TestOneIdentityPerAccount:
    async def test_the_same_identity_cannot_back_a_second_account(self, env: Env, tenant: str) -> None:
        await env.call(
            "UpdateEligibilityPolicy",
            V.UpdateEligibilityPolicyRequest(
                policy=V.EligibilityPolicy(tenant_id=tenant, one_identity_per_account=True),
                update_mask={"paths": ["one_identity_per_account"]},
            ),
            provider(tenant),
        )
        first = await verify(env, tenant, ADULT, "u-1")
        assert first.flow.state == V.VERIFICATION_FLOW_STATE_COMPLETED
        env.clock.now += timedelta(hours=1)
        second = await verify(env, tenant, ADULT, "u-2")
        assert second.flow.state == V.VERIFICATION_FLOW_STATE_FAILED
        assert second.flow.failure_reason == V.VERIFICATION_FAILURE_REASON_IDENTITY_IN_USE
        assert second.account.verification_level == V.VERIFICATION_LEVEL_NONE
        other_tenant = f"t-{uuid.uuid4().hex[:12]}"
        elsewhere = await verify(env, other_tenant, ADULT, "u-9")  # another tenant's digests are unrelated
        assert elsewhere.flow.state == V.VERIFICATION_FLOW_STATE_COMPLETED


class TestTenancy:
    async def test_another_tenants_flow_is_not_found_and_their_user_is_denied(self, env: Env, tenant: str) -> None:
        await consent(env, tenant)
        flow = await start(env, tenant)
        other = f"t-{uuid.uuid4().hex[:12]}"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.call("GetVerificationFlow", V.GetVerificationFlowRequest(flow_id=flow.flow_id), provider(other))
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.call("SendVerificationCode", V.SendVerificationCodeRequest(flow_id=flow.flow_id), provider(other))
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.call("ListConsents", V.ListConsentsRequest(user=user(tenant)), provider(other))
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


class TestMinors:
    async def test_an_under_14_needs_a_guardians_consent_before_completing(self, env: Env, tenant: str) -> None:
        await consent(env, tenant)
        flow = await start(env, tenant, CHILD)
        assert flow.guardian_consent_required
        confirmed = await confirm(env, tenant, flow.flow_id, CHILD["mobile"])
        assert confirmed.flow.state == V.VERIFICATION_FLOW_STATE_AWAITING_GUARDIAN_CONSENT
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await complete(env, tenant, flow.flow_id)
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        recorded = await env.call(
            "RecordGuardianConsent",
            V.RecordGuardianConsentRequest(
                idempotency_key=key(),
                flow_id=flow.flow_id,
                guardian=V.IndividualIdentity(**ADULT_B),
                relationship=V.GUARDIAN_RELATIONSHIP_PARENT,
                consent_text_version="2027-01",
            ),
            provider(tenant),
        )
        assert recorded.flow.state == V.VERIFICATION_FLOW_STATE_CODE_CONFIRMED
        assert recorded.consent.masked_guardian_name.masked == "测****"
        done = await complete(env, tenant, flow.flow_id)
        assert done.flow.state == V.VERIFICATION_FLOW_STATE_COMPLETED
        assert done.account.minor
        assert done.account.age_years == 11
        assert done.account.guardian_consent_recorded

    async def test_a_minor_cannot_be_the_guardian(self, env: Env, tenant: str) -> None:
        await consent(env, tenant)
        flow = await start(env, tenant, CHILD)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.call(
                "RecordGuardianConsent",
                V.RecordGuardianConsentRequest(
                    idempotency_key=key(),
                    flow_id=flow.flow_id,
                    guardian=V.IndividualIdentity(**CHILD),
                    relationship=V.GUARDIAN_RELATIONSHIP_PARENT,
                    consent_text_version="2027-01",
                ),
                provider(tenant),
            )
        assert violated_fields(caught.value) == {"guardian.resident_id_number"}


class TestErasure:
    async def test_withdrawing_consent_shreds_the_data_and_the_ledger_still_holds_none(
        self, env: Env, tenant: str
    ) -> None:
        signer = NoteSigner.generate("test.example/identity-ledger")
        given = await consent(env, tenant)
        flow = await start(env, tenant)
        await confirm(env, tenant, flow.flow_id, ADULT["mobile"])
        await complete(env, tenant, flow.flow_id)
        await integrate_and_verify(env, signer)  # the account's trail, sequenced before the erasure
        (key_row,) = await env.sql("select * from identity.personal_data_keys where record_id = %s", flow.flow_id)
        (flow_row,) = await env.sql("select * from identity.verification_flows where flow_id = %s", flow.flow_id)
        withdrawn = await env.call(
            "WithdrawConsent",
            V.WithdrawConsentRequest(idempotency_key=key(), consent_id=given.consent_id),
            provider(tenant),
        )
        assert withdrawn.consent.HasField("withdraw_time")
        assert withdrawn.erasure.erasure_id
        assert await env.sql("select 1 from identity.personal_data_keys where tenant_id = %s", tenant) == []
        (after,) = await env.sql("select * from identity.verification_flows where flow_id = %s", flow.flow_id)
        assert after["name_ct"] is None and after["id_index"] is None and after["phone_index"] is None
        account = (await env.call("GetAccount", V.GetAccountRequest(user=user(tenant)), provider(tenant))).account
        assert account.status == V.ACCOUNT_STATUS_ERASED
        assert account.verification_level == V.VERIFICATION_LEVEL_NONE
        assert not account.HasField("masked_name") and not account.HasField("masked_id_number")
        assert not account.sensitive_consent_in_force
        # A copy of the ciphertext (a backup) does not open without the destroyed key: a key that
        # someone kept aside opens only that record, and a fresh vault key cannot stand in for it.
        vault = Vault.from_key_file_text((env.settings.own_vault_kek_file).read_text())
        kept = WrappedDataKey(key_row["kek_id"], key_row["version"], bytes(key_row["wrapped"]))
        assert vault.open_data_key(flow.flow_id, kept).decrypt("name", bytes(flow_row["name_ct"])) == ADULT["name"]
        _, fresh = vault.new_data_key(flow.flow_id)
        with pytest.raises(FieldDecryptionFailed):
            fresh.decrypt("name", bytes(flow_row["name_ct"]))
        entries = await ledger(env, tenant)
        assert [e["action"] for e in entries][-2:] == ["personal_data.erase", "consent.withdraw"]
        assert entries[-2]["id"] == withdrawn.erasure.ledger_entry_id
        verdict = await env.call(
            "CheckEligibility",
            V.CheckEligibilityRequest(user=user(tenant), action=V.ACCOUNT_FUNCTION_PUBLISH),
            provider(tenant),
        )
        assert V.INELIGIBILITY_CODE_CONSENT_MISSING in {r.code for r in verdict.reasons}
        await integrate_and_verify(env, signer)  # the trail stays verifiable after the erasure

    async def test_erasure_on_request_and_verifying_again(self, env: Env, tenant: str) -> None:
        await verify(env, tenant)
        erased = await env.call(
            "RequestErasure",
            V.RequestErasureRequest(idempotency_key="erase-1", user=user(tenant), reason="user asked"),
            provider(tenant),
        )
        assert erased.account.status == V.ACCOUNT_STATUS_ERASED
        assert erased.account.verification_level == V.VERIFICATION_LEVEL_NONE
        again = await env.call(
            "RequestErasure",
            V.RequestErasureRequest(idempotency_key="erase-1", user=user(tenant), reason="user asked"),
            provider(tenant),
        )
        assert again.erasure.erasure_id == erased.erasure.erasure_id
        env.clock.now += timedelta(hours=2)
        flow = await start(env, tenant)
        await confirm(env, tenant, flow.flow_id, ADULT["mobile"])
        done = await complete(env, tenant, flow.flow_id)
        assert done.account.status == V.ACCOUNT_STATUS_ACTIVE
        assert done.account.verification_level == V.VERIFICATION_LEVEL_AUTHORITATIVELY_VERIFIED


class TestPersonalDataProof:
    """The issue's "done when": no clear name, ID number or phone number in the database, the
    service's logs, PostgreSQL's own log (a unique violation included), error messages or the
    ledger, after flows with known values ran through every path."""

    async def test_no_clear_personal_data_anywhere(
        self, env: Env, tenant: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        server_log = ServerLog(env.database.admin_url)
        log_mark = server_log.size()
        await env.call(
            "UpdateEligibilityPolicy",
            V.UpdateEligibilityPolicyRequest(
                policy=V.EligibilityPolicy(tenant_id=tenant, one_identity_per_account=True),
                update_mask={"paths": ["one_identity_per_account"]},
            ),
            provider(tenant),
        )
        await verify(env, tenant, ADULT, "p-1")
        env.clock.now += timedelta(hours=1)
        taken = await verify(env, tenant, ADULT, "p-2")  # the unique violation, caused on purpose
        assert taken.flow.failure_reason == V.VERIFICATION_FAILURE_REASON_IDENTITY_IN_USE
        env.clock.now += timedelta(hours=1)
        await consent(env, tenant, "p-3")
        child = await start(env, tenant, CHILD, "p-3")
        await env.call(
            "RecordGuardianConsent",
            V.RecordGuardianConsentRequest(
                idempotency_key=key(),
                flow_id=child.flow_id,
                guardian=V.IndividualIdentity(**ADULT_B),
                relationship=V.GUARDIAN_RELATIONSHIP_PARENT,
                consent_text_version="2027-01",
            ),
            provider(tenant),
        )
        for bad in (
            {**ADULT, "resident_id_number": "110101199003071234"},
            {**ADULT, "mobile": "1380013800"},
            {**ADULT, "mobile": "138 0013 800"},
        ):
            with pytest.raises(grpc.aio.AioRpcError):
                await start(env, tenant, bad, "p-4")
        with pytest.raises(grpc.aio.AioRpcError) as unavailable:
            await verify(env, tenant, DOWN, "p-5")  # the verifier is down for this person
        assert unavailable.value.code() is grpc.StatusCode.UNAVAILABLE
        for user_id, mobile in (("p-6", "138 0013 8000"), ("p-7", "+86 13800138000")):
            await consent(env, tenant, user_id)
            await start(env, tenant, {**ADULT, "mobile": mobile}, user_id)

        def forms(value: str) -> set[str]:
            """The value as sent, and as a JSON encoder escapes it (ensure_ascii: \\uXXXX for each CJK character)."""
            return {value, json.dumps(value, ensure_ascii=True)[1:-1]}

        def assert_clean(text: str, where: str) -> None:
            for value in CLEAR_VALUES:
                for form in forms(value):
                    assert form not in text, f"{where} holds a clear value"

        # (a) every row of every table of every schema, as text, read by the superuser
        tables = await env.sql(
            "select schemaname, tablename from pg_tables where schemaname not in ('pg_catalog', 'information_schema')"
        )
        assert any(t["tablename"] == "verification_flows" for t in tables)
        for t in tables:
            rows = await env.sql(f'select t::text as row from "{t["schemaname"]}"."{t["tablename"]}" t')
            for r in rows:
                assert_clean(r["row"], f"{t['schemaname']}.{t['tablename']}")
                # bytea columns print as hex: the UTF-8 of a clear value would show there
                for value in CLEAR_VALUES:
                    assert value.encode().hex() not in r["row"], f"{t['tablename']} holds clear bytes"
        # (b) the service's logs, as the processes write them: message, `extra` fields and exception text
        formatter = json_formatter()
        assert caplog.records
        for record in caplog.records:
            assert_clean(record.getMessage(), "a log record")
            assert_clean(formatter.format(record), "a formatted log line")
        # (d) error messages returned to callers
        assert env.errors
        for error in env.errors:
            assert_clean(error, "an error message")
        # (e) the ledger, queued or sequenced
        for row in await env.sql("select convert_from(payload, 'UTF8') as doc from ledger.queue"):
            assert_clean(row["doc"], "the ledger")
        # (c) PostgreSQL's own error report of the unique violation: what the server writes to its
        # log (ERROR and DETAIL) is what the client receives in the error's diagnostics.
        (claim,) = await env.sql(
            "select * from identity.identity_claims where tenant_id = %s and user_id = 'p-1'", tenant
        )
        async with await psycopg.AsyncConnection.connect(libpq_url(env.database.url_for("identity"))) as conn:
            with pytest.raises(psycopg.errors.UniqueViolation) as caught:
                await conn.execute(
                    "insert into identity.identity_claims (tenant_id, kind, version, digest, user_id, flow_id,"
                    " create_time) values (%s, %s, %s, %s, 'p-2', 'vf-x', now())",
                    (tenant, claim["kind"], claim["version"], claim["digest"]),
                )
        diag = caught.value.diag
        report = f"{diag.message_primary} {diag.message_detail} {diag.constraint_name} {caught.value}"
        assert "identity_claims_pkey" in report
        assert bytes(claim["digest"]).hex() in (diag.message_detail or "")
        assert_clean(report, "PostgreSQL's error report")
        # (c) and PostgreSQL's log file itself, over the whole test: it holds the unique
        # violations (the service's own and the one above, ERROR, DETAIL and STATEMENT), so this
        # is the right file, and none of the clear values.
        logged = server_log.since(log_mark)
        assert "identity_claims_pkey" in logged
        assert bytes(claim["digest"]).hex() in logged
        assert_clean(logged, "PostgreSQL's log")
