"""Real-name verification's rules, as VerificationService applies them over
the in-memory store (no gRPC, no database): a current consent before a flow
starts, the document checks, code sending limits and escalating lockouts,
completion for an adult and an organisation, a verifier that cannot answer,
a guardian's consent for an under-14, erasure (crypto-shredding) and
idempotent retries."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import timedelta

import pytest

from avgate.kernel import legal
from avgate.kernel.errors import (
    DependencyUnavailable,
    FailedPrecondition,
    IdempotencyConflict,
    InvalidArgument,
    ResourceExhausted,
)
from avgate.kernel.keyring import new_key_line, parse_key_file
from avgate.kernel.principal import Principal, Role
from avgate.ledger.entry import LedgerEntry
from services.identity.codes import HashKeyRing, OneTimeCodes
from services.identity.domain import (
    AccountStatus,
    EligibilityPolicy,
    SubjectType,
    UserRef,
    VerificationLevel,
    VerificationMethod,
)
from services.identity.limits import AbuseLimits
from services.identity.sms import SmsRejected
from services.identity.vault import BlindIndexer, Vault
from services.identity.verification.domain import (
    ConsentPurpose,
    FailureReason,
    Flow,
    FlowState,
    GuardianInput,
    GuardianRelationship,
    IdentityInput,
)
from services.identity.verification.memory import InMemoryVerificationStore
from services.identity.verification.service import VerificationService
from services.identity.verifier import VERIFIER_DEPENDENCY, VerifierAnswer, VerifierOutcome
from tests.support import FakeClock

TENANT = "video-co"
USER = UserRef(TENANT, "u-1")
ADDRESS = "203.0.113.5"
PROVIDER = Principal(role=Role.PROVIDER, subject="key-video-co", tenant_id=TENANT, client_address=ADDRESS)
OTHER_ADDRESS = replace(PROVIDER, client_address="198.51.100.9")

# Fictitious people (valid check digits); the clock starts on 2026-12-01.
ADULT = ("测试用户甲", "110101199003071233", "+86 138 0013 8000")
ADULT_B = ("测试用户乙", "310104198511204567", "13900139001")
CHILD = ("测试用户丙", "440305201506150219", "13700137002")  # 11 years old
ORG = ("测试科技有限公司", "91110108MA01ABCD5T", "13600136003")


def individual(person: tuple[str, str, str] = ADULT) -> IdentityInput:
    name, id_number, mobile = person
    return IdentityInput(SubjectType.INDIVIDUAL, name=name, id_number=id_number, mobile=mobile)


def organization() -> IdentityInput:
    name, code, mobile = ORG
    return IdentityInput(SubjectType.ORGANIZATION, name=name, id_number=code, mobile=mobile)


@dataclass
class RecordingSms:
    """An SmsSender that keeps what it sent; `refuse` makes the next sends fail."""

    sent: list[tuple[str, str]] = field(default_factory=list)
    refuse: bool = False

    async def send(self, phone_e164: str, text: str) -> str:
        if self.refuse:
            raise SmsRejected("the SMS gateway refused the message")
        self.sent.append((phone_e164, text))
        return f"sms-{len(self.sent)}"

    def last_code(self) -> str:
        found = re.search(r"\d{6}", self.sent[-1][1])
        assert found is not None
        return found.group()


@dataclass
class FakeVerifier:
    """The national verifier's interface over a table of known identities (as the stand-in's data
    file): the same name matches, another mismatches, an unknown number is not found; `down`
    makes it unable to answer."""

    known: dict[str, str] = field(
        default_factory=lambda: {p[1]: p[0] for p in (ADULT, ADULT_B, CHILD)} | {ORG[1]: ORG[0]}
    )
    down: bool = False
    asked: int = 0

    def _answer(self, number: str, name: str) -> VerifierAnswer:
        self.asked += 1
        if self.down:
            raise DependencyUnavailable(VERIFIER_DEPENDENCY, retry_after_seconds=5.0)
        if number not in self.known:
            return VerifierAnswer(VerifierOutcome.NOT_FOUND, f"ref-{self.asked}")
        outcome = VerifierOutcome.MATCH if self.known[number] == name else VerifierOutcome.MISMATCH
        return VerifierAnswer(outcome, f"ref-{self.asked}")

    async def verify_individual(self, *, name: str, id_number: str) -> VerifierAnswer:
        return self._answer(id_number, name)

    async def verify_organization(self, *, credit_code: str, name: str) -> VerifierAnswer:
        return self._answer(credit_code, name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> InMemoryVerificationStore:
    keys = HashKeyRing.from_key_file(parse_key_file(new_key_line("otp-1") + "\n"))
    return InMemoryVerificationStore(
        codes=OneTimeCodes(keys, clock=clock),
        limits=AbuseLimits(address_secret=keys.derive("limits/client-address"), clock=clock),
        clock=clock,
    )


@pytest.fixture
def sms() -> RecordingSms:
    return RecordingSms()


@pytest.fixture
def verifier() -> FakeVerifier:
    return FakeVerifier()


@pytest.fixture
def service(
    store: InMemoryVerificationStore, sms: RecordingSms, verifier: FakeVerifier, clock: FakeClock
) -> VerificationService:
    return VerificationService(
        store,
        vault=Vault.from_key_file_text(new_key_line("kek-1") + "\n"),
        indexer=BlindIndexer.from_key_file_text(new_key_line("idx-1") + "\n"),
        sms=sms,
        verifier=verifier,
        clock=clock,
    )


async def consent(service: VerificationService, user: UserRef = USER, key: str = "consent-1") -> None:
    await service.record_consent(
        PROVIDER, key, user, ConsentPurpose.SENSITIVE_PERSONAL_INFORMATION, "2027-01", consent_time=None
    )


async def confirmed(
    service: VerificationService, sms: RecordingSms, raw: IdentityInput, user: UserRef = USER, key: str = "start-1"
) -> Flow:
    """A flow of `user` whose code was confirmed (consent given first)."""
    await consent(service, user, key="consent-" + key)
    flow = await service.start(PROVIDER, key, user, raw)
    await service.send_code(PROVIDER, flow.flow_id)
    confirmed_flow, _ = await service.confirm_code(PROVIDER, flow.flow_id, sms.last_code())
    return confirmed_flow


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def actions(store: InMemoryVerificationStore) -> list[str]:
    return [e.action for e in store.ledger]


class TestConsentBeforeStart:
    async def test_a_flow_needs_a_current_sensitive_information_consent(
        self, service: VerificationService, store: InMemoryVerificationStore
    ) -> None:
        with pytest.raises(FailedPrecondition, match="consent"):
            await service.start(PROVIDER, "start-1", USER, individual())

        assert store.tables.flows == {} and store.tables.data_keys == {}
        assert store.ledger == []

    async def test_with_the_consent_the_flow_starts_format_checked(
        self, service: VerificationService, store: InMemoryVerificationStore
    ) -> None:
        await consent(service)

        flow = await service.start(PROVIDER, "start-1", USER, individual())

        assert flow.state is FlowState.AWAITING_CODE
        assert flow.level_reached is VerificationLevel.FORMAT_CHECKED
        assert flow.masked_id_number is not None and ADULT[1] not in str(flow.masked_id_number)
        assert actions(store) == ["consent.record", "verification.start"]
        account = await store.identity.account(USER)
        assert account is not None and account.sensitive_consent_in_force is True

    async def test_a_withdrawn_consent_no_longer_lets_a_flow_start(
        self, service: VerificationService, store: InMemoryVerificationStore
    ) -> None:
        given = await service.record_consent(
            PROVIDER, "consent-1", USER, ConsentPurpose.SENSITIVE_PERSONAL_INFORMATION, "2027-01", consent_time=None
        )
        await service.withdraw_consent(PROVIDER, "withdraw-1", given.consent_id, withdraw_time=None)

        with pytest.raises(FailedPrecondition):
            await service.start(PROVIDER, "start-1", USER, individual())


class TestDocumentChecks:
    @pytest.mark.parametrize(
        ("raw", "field"),
        [
            (individual((ADULT[0], "110101199003071234", ADULT[2])), "individual.resident_id_number"),
            (individual((ADULT[0], ADULT[1], "12345")), "individual.mobile"),
            (individual(("", ADULT[1], ADULT[2])), "individual.name"),
            (
                IdentityInput(SubjectType.ORGANIZATION, name=ORG[0], id_number="91110108MA01ABCD5X", mobile=ORG[2]),
                "organization.unified_social_credit_code",
            ),
            (IdentityInput(None), "subject"),
        ],
        ids=["resident-id-check-digit", "mobile", "empty-name", "credit-code-check-digit", "no-subject"],
    )
    async def test_bad_input_names_the_field_and_stores_nothing(
        self, service: VerificationService, store: InMemoryVerificationStore, raw: IdentityInput, field: str
    ) -> None:
        await consent(service)
        before = list(store.ledger)

        with pytest.raises(InvalidArgument) as refused:
            await service.start(PROVIDER, "start-1", USER, raw)

        assert [v.field for v in refused.value.violations] == [field]
        assert store.tables.flows == {} and store.tables.data_keys == {}
        assert store.ledger == before

    async def test_a_malformed_code_costs_no_attempt(
        self, service: VerificationService, store: InMemoryVerificationStore, sms: RecordingSms
    ) -> None:
        await consent(service)
        flow = await service.start(PROVIDER, "start-1", USER, individual())
        await service.send_code(PROVIDER, flow.flow_id)

        with pytest.raises(InvalidArgument) as refused:
            await service.confirm_code(PROVIDER, flow.flow_id, "12a4")
        _, remaining = await service.confirm_code(PROVIDER, flow.flow_id, wrong(sms.last_code()))

        assert [v.field for v in refused.value.violations] == ["code"]
        assert remaining == 4


class TestCodeSending:
    async def test_one_code_a_minute_to_a_phone(
        self, service: VerificationService, sms: RecordingSms, clock: FakeClock
    ) -> None:
        await consent(service)
        flow = await service.start(PROVIDER, "start-1", USER, individual())

        sent = await service.send_code(PROVIDER, flow.flow_id)
        with pytest.raises(ResourceExhausted) as too_soon:
            await service.send_code(PROVIDER, flow.flow_id)
        clock.advance(seconds=60)
        again = await service.send_code(PROVIDER, flow.flow_id)

        assert sent.next_send_time == sent.flow.create_time + timedelta(seconds=60)
        assert sent.code_expire_time == sent.flow.create_time + timedelta(minutes=5)
        assert (too_soon.value.metadata["limit"], too_soon.value.retry_after_seconds) == ("phone_interval", 60)
        assert again.code_expire_time == clock.now + timedelta(minutes=5)
        assert [to for to, _ in sms.sent] == ["+8613800138000", "+8613800138000"]

    async def test_at_most_five_codes_an_hour_to_a_phone(self, service: VerificationService, clock: FakeClock) -> None:
        await consent(service)
        flow = await service.start(PROVIDER, "start-1", USER, individual())
        for _ in range(5):
            await service.send_code(PROVIDER, flow.flow_id)
            clock.advance(seconds=60)

        with pytest.raises(ResourceExhausted) as hourly:
            await service.send_code(PROVIDER, flow.flow_id)

        assert hourly.value.metadata["limit"] == "phone_hourly"
        assert hourly.value.retry_after_seconds == 3600 - 5 * 60

    async def test_a_failed_sms_leaves_no_code_no_count_and_no_entry(
        self, service: VerificationService, store: InMemoryVerificationStore, sms: RecordingSms
    ) -> None:
        await consent(service)
        flow = await service.start(PROVIDER, "start-1", USER, individual())
        before = list(store.ledger)
        sms.refuse = True

        with pytest.raises(SmsRejected):
            await service.send_code(PROVIDER, flow.flow_id)

        assert store.tables.codes == {} and store.tables.send_limits == {}
        assert store.ledger == before
        sms.refuse = False
        await service.send_code(PROVIDER, flow.flow_id)  # not rate limited: the failed send was not counted


class TestLockouts:
    async def test_wrong_codes_lock_the_address_out_and_the_lockouts_escalate(
        self,
        service: VerificationService,
        store: InMemoryVerificationStore,
        sms: RecordingSms,
        clock: FakeClock,
    ) -> None:
        await consent(service)
        flow = await service.start(PROVIDER, "start-1", USER, individual())
        await service.send_code(PROVIDER, flow.flow_id)
        code = sms.last_code()

        remaining = [(await service.confirm_code(PROVIDER, flow.flow_id, wrong(code)))[1] for _ in range(5)]
        with pytest.raises(ResourceExhausted) as first_lock:
            await service.confirm_code(PROVIDER, flow.flow_id, code)
        account = await store.identity.account(USER)

        assert remaining == [4, 3, 2, 1, 0]
        assert first_lock.value.metadata["limit"] == "address_lockout"
        assert first_lock.value.retry_after_seconds == 60
        assert account is not None and account.lockout is not None
        assert account.lockout.until == clock.now + timedelta(minutes=1)

        clock.advance(minutes=1)
        await service.send_code(PROVIDER, flow.flow_id)  # the last code died of its wrong guesses
        code = sms.last_code()
        for _ in range(5):
            await service.confirm_code(PROVIDER, flow.flow_id, wrong(code))
        with pytest.raises(ResourceExhausted) as second_lock:
            await service.confirm_code(PROVIDER, flow.flow_id, code)

        assert second_lock.value.retry_after_seconds == 5 * 60
        assert "code_failed" in actions(store)[-1]

    async def test_another_address_is_not_locked_out_and_its_success_clears_the_lockout(
        self,
        service: VerificationService,
        store: InMemoryVerificationStore,
        sms: RecordingSms,
        clock: FakeClock,
    ) -> None:
        await consent(service)
        flow = await service.start(PROVIDER, "start-1", USER, individual())
        await service.send_code(PROVIDER, flow.flow_id)
        for _ in range(3):
            await service.confirm_code(PROVIDER, flow.flow_id, wrong(sms.last_code()))
        clock.advance(seconds=60)
        await service.send_code(PROVIDER, flow.flow_id)  # a fresh code; the address's failures still count
        code = sms.last_code()
        _, before_lock = await service.confirm_code(PROVIDER, flow.flow_id, wrong(code))
        _, at_lock = await service.confirm_code(PROVIDER, flow.flow_id, wrong(code))

        with pytest.raises(ResourceExhausted) as locked:
            await service.confirm_code(PROVIDER, flow.flow_id, code)
        locked_account = await store.identity.account(USER)
        elsewhere, _ = await service.confirm_code(OTHER_ADDRESS, flow.flow_id, code)
        account = await store.identity.account(USER)

        assert (before_lock, at_lock) == (1, 0)
        assert locked.value.metadata["limit"] == "address_lockout"
        assert locked_account is not None and locked_account.lockout is not None
        assert elsewhere.state is FlowState.CODE_CONFIRMED
        assert account is not None and account.lockout is None

    async def test_the_right_code_after_failures_confirms_and_clears_the_lockout(
        self,
        service: VerificationService,
        store: InMemoryVerificationStore,
        sms: RecordingSms,
    ) -> None:
        await consent(service)
        flow = await service.start(PROVIDER, "start-1", USER, individual())
        await service.send_code(PROVIDER, flow.flow_id)
        code = sms.last_code()
        for _ in range(3):
            await service.confirm_code(PROVIDER, flow.flow_id, wrong(code))

        confirmed_flow, remaining = await service.confirm_code(OTHER_ADDRESS, flow.flow_id, code)
        account = await store.identity.account(USER)

        assert confirmed_flow.state is FlowState.CODE_CONFIRMED
        assert confirmed_flow.level_reached is VerificationLevel.PHONE_VERIFIED
        assert remaining == 0
        assert account is not None and account.lockout is None


class TestCompletion:
    async def test_an_adult_reaches_the_authoritative_level(
        self, service: VerificationService, store: InMemoryVerificationStore, sms: RecordingSms
    ) -> None:
        flow = await confirmed(service, sms, individual())

        done = await service.complete(PROVIDER, flow.flow_id, "complete-1")
        account = await store.identity.account(USER)

        assert done.state is FlowState.COMPLETED
        assert done.level_reached is VerificationLevel.AUTHORITATIVELY_VERIFIED
        assert done.methods == (
            VerificationMethod.FORMAT_CHECK,
            VerificationMethod.SMS_CODE,
            VerificationMethod.AUTHORITATIVE_SERVICE,
        )
        assert account is not None
        assert account.verification_level is VerificationLevel.AUTHORITATIVELY_VERIFIED
        assert (account.subject_type, account.minor_until, account.status) == (
            SubjectType.INDIVIDUAL,
            None,
            AccountStatus.ACTIVE,
        )
        assert actions(store)[-3:] == ["verification.code_sent", "verification.code_confirmed", "verification.complete"]
        masked = await service.masked_identity(USER)
        assert all(m is not None for m in masked)

    async def test_an_organisation_is_verified_by_its_credit_code(
        self, service: VerificationService, store: InMemoryVerificationStore, sms: RecordingSms
    ) -> None:
        flow = await confirmed(service, sms, organization())

        done = await service.complete(PROVIDER, flow.flow_id, "complete-1")
        account = await store.identity.account(USER)

        assert done.subject_type is SubjectType.ORGANIZATION
        assert done.level_reached is VerificationLevel.AUTHORITATIVELY_VERIFIED
        assert account is not None and account.subject_type is SubjectType.ORGANIZATION

    async def test_without_the_code_a_flow_completes_at_format_checked_without_asking_the_verifier(
        self, service: VerificationService, verifier: FakeVerifier
    ) -> None:
        await consent(service)
        flow = await service.start(PROVIDER, "start-1", USER, individual())

        done = await service.complete(PROVIDER, flow.flow_id, "complete-1")

        assert (done.state, done.level_reached) == (FlowState.COMPLETED, VerificationLevel.FORMAT_CHECKED)
        assert verifier.asked == 0

    async def test_an_unavailable_verifier_is_never_a_match(
        self,
        service: VerificationService,
        store: InMemoryVerificationStore,
        sms: RecordingSms,
        verifier: FakeVerifier,
    ) -> None:
        flow = await confirmed(service, sms, individual())
        before = list(store.ledger)
        verifier.down = True

        with pytest.raises(DependencyUnavailable):
            await service.complete(PROVIDER, flow.flow_id, "complete-1")
        held = await service.get_flow(PROVIDER, flow.flow_id)
        account = await store.identity.account(USER)

        assert held.state is FlowState.CODE_CONFIRMED
        assert account is not None and account.verification_level is VerificationLevel.NONE
        assert store.ledger == before

        verifier.down = False
        done = await service.complete(PROVIDER, flow.flow_id, "complete-1")
        assert done.level_reached is VerificationLevel.AUTHORITATIVELY_VERIFIED

    async def test_a_mismatch_fails_the_flow_and_leaves_the_account_unverified(
        self,
        service: VerificationService,
        store: InMemoryVerificationStore,
        sms: RecordingSms,
        verifier: FakeVerifier,
    ) -> None:
        verifier.known[ADULT[1]] = "别人"
        flow = await confirmed(service, sms, individual())

        done = await service.complete(PROVIDER, flow.flow_id, "complete-1")
        account = await store.identity.account(USER)

        assert (done.state, done.failure_reason) == (FlowState.FAILED, FailureReason.IDENTITY_MISMATCH)
        assert account is not None and account.verification_level is VerificationLevel.NONE
        assert actions(store)[-1] == "verification.fail"

    async def test_one_identity_backs_one_account_where_the_tenant_says_so(
        self, service: VerificationService, store: InMemoryVerificationStore, sms: RecordingSms, clock: FakeClock
    ) -> None:
        await store.identity.update_policy(
            TENANT,
            lambda p: (
                replace(p, one_identity_per_account=True, revision=p.revision + 1, update_time=clock.now),
                policy_entry(p),
            ),
        )
        first = await confirmed(service, sms, individual())
        await service.complete(PROVIDER, first.flow_id, "complete-1")
        clock.advance(minutes=2)  # the phone's send interval
        other = UserRef(TENANT, "u-2")
        second = await confirmed(service, sms, individual(), user=other, key="start-2")

        done = await service.complete(PROVIDER, second.flow_id, "complete-2")

        assert (done.state, done.failure_reason) == (FlowState.FAILED, FailureReason.IDENTITY_IN_USE)


def policy_entry(policy: EligibilityPolicy) -> LedgerEntry:
    return LedgerEntry(
        action="eligibility_policy.update",
        subject_type="eligibility_policy",
        subject_id=policy.tenant_id,
        actor=PROVIDER,
        legal_basis=legal.ART_8,
        tenant_id=policy.tenant_id,
    )


class TestGuardians:
    def guardian(self, flow: Flow, person: tuple[str, str, str] = ADULT_B, key: str = "guardian-1") -> GuardianInput:
        return GuardianInput(
            idempotency_key=key,
            flow_id=flow.flow_id,
            guardian=individual(person),
            relationship=GuardianRelationship.PARENT,
            text_version="2027-01",
            consent_time=None,
        )

    async def test_an_under_14_completes_only_after_a_guardians_consent(
        self, service: VerificationService, store: InMemoryVerificationStore, sms: RecordingSms
    ) -> None:
        flow = await confirmed(service, sms, individual(CHILD))

        with pytest.raises(FailedPrecondition, match="guardian"):
            await service.complete(PROVIDER, flow.flow_id, "complete-1")
        waiting = flow
        with_guardian, guardian_consent = await service.record_guardian_consent(PROVIDER, self.guardian(flow))
        done = await service.complete(PROVIDER, flow.flow_id, "complete-1")
        account = await store.identity.account(USER)

        assert waiting.state is FlowState.AWAITING_GUARDIAN_CONSENT and waiting.guardian_consent_required
        assert with_guardian.state is FlowState.CODE_CONFIRMED
        assert guardian_consent.purpose is ConsentPurpose.GUARDIAN
        assert guardian_consent.masked_guardian_name is not None
        assert done.state is FlowState.COMPLETED
        assert account is not None and account.guardian_consent_recorded is True
        assert account.minor_until is not None and account.age_years(FakeClock().now.date()) == 11

    async def test_a_minor_cannot_be_the_guardian(self, service: VerificationService, sms: RecordingSms) -> None:
        flow = await confirmed(service, sms, individual(CHILD))

        with pytest.raises(InvalidArgument) as refused:
            await service.record_guardian_consent(PROVIDER, self.guardian(flow, CHILD))

        assert [v.field for v in refused.value.violations] == ["guardian.resident_id_number"]

    async def test_a_guardian_the_verifier_does_not_know_fails_the_flow(
        self, service: VerificationService, sms: RecordingSms, verifier: FakeVerifier
    ) -> None:
        flow = await confirmed(service, sms, individual(CHILD))
        del verifier.known[ADULT_B[1]]

        with pytest.raises(FailedPrecondition):
            await service.record_guardian_consent(PROVIDER, self.guardian(flow))
        failed = await service.get_flow(PROVIDER, flow.flow_id)

        assert (failed.state, failed.failure_reason) == (FlowState.FAILED, FailureReason.GUARDIAN_CONSENT_FAILED)


class TestErasure:
    async def test_erasure_on_request_shreds_the_data_and_the_account_falls_to_none(
        self, service: VerificationService, store: InMemoryVerificationStore, sms: RecordingSms
    ) -> None:
        flow = await confirmed(service, sms, individual())
        await service.complete(PROVIDER, flow.flow_id, "complete-1")

        erasure = await service.request_erasure(PROVIDER, "erase-1", USER, "the user asked")
        again = await service.request_erasure(PROVIDER, "erase-1", USER, "the user asked")
        account = await store.identity.account(USER)
        seen = await service.get_flow(PROVIDER, flow.flow_id)
        (stored,) = store.tables.flows.values()

        assert again == erasure
        assert store.tables.data_keys == {} and store.tables.claims == {} and store.tables.codes == {}
        assert (stored.name_ct, stored.id_number_ct, stored.mobile_ct, stored.id_index, stored.phone_index) == (
            None,
            None,
            None,
            None,
            None,
        )
        assert (seen.masked_name, seen.masked_id_number, seen.masked_mobile) == (None, None, None)
        assert await service.masked_identity(USER) == (None, None, None)
        assert account is not None
        assert (account.verification_level, account.status, account.methods) == (
            VerificationLevel.NONE,
            AccountStatus.ERASED,
            (),
        )
        assert [e.action for e in store.ledger].count("personal_data.erase") == 1
        assert all(ADULT[1] not in str(e.to_json()) for e in store.ledger)

    async def test_withdrawing_the_sensitive_consent_erases_and_fails_an_open_flow(
        self, service: VerificationService, store: InMemoryVerificationStore
    ) -> None:
        given = await service.record_consent(
            PROVIDER, "consent-1", USER, ConsentPurpose.SENSITIVE_PERSONAL_INFORMATION, "2027-01", consent_time=None
        )
        flow = await service.start(PROVIDER, "start-1", USER, individual())

        withdrawn, erasure = await service.withdraw_consent(PROVIDER, "withdraw-1", given.consent_id, None)
        seen = await service.get_flow(PROVIDER, flow.flow_id)
        account = await store.identity.account(USER)

        assert withdrawn.withdraw_time is not None and erasure is not None
        assert (seen.state, seen.failure_reason) == (FlowState.FAILED, FailureReason.CONSENT_WITHDRAWN)
        assert store.tables.data_keys == {}
        assert account is not None and account.status is AccountStatus.ERASED
        assert account.sensitive_consent_in_force is False


class TestIdempotentRetries:
    async def test_a_retried_start_returns_the_same_flow(
        self, service: VerificationService, store: InMemoryVerificationStore
    ) -> None:
        await consent(service)

        first = await service.start(PROVIDER, "start-1", USER, individual())
        again = await service.start(PROVIDER, "start-1", USER, individual())

        assert again == first
        assert actions(store).count("verification.start") == 1
        assert len(store.tables.flows) == 1

    async def test_the_same_key_with_another_identity_is_a_conflict(self, service: VerificationService) -> None:
        await consent(service)
        await service.start(PROVIDER, "start-1", USER, individual())

        with pytest.raises(IdempotencyConflict):
            await service.start(PROVIDER, "start-1", USER, individual(ADULT_B))

    async def test_a_retried_consent_and_completion_answer_as_the_first_time(
        self, service: VerificationService, store: InMemoryVerificationStore, sms: RecordingSms
    ) -> None:
        flow = await confirmed(service, sms, individual())
        first = await service.complete(PROVIDER, flow.flow_id, "complete-1")
        again = await service.complete(PROVIDER, flow.flow_id, "complete-1")
        consents = [
            await service.record_consent(
                PROVIDER, "consent-x", USER, ConsentPurpose.SERVICE_AGREEMENT, "2027-01", consent_time=None
            )
            for _ in range(2)
        ]

        assert again == first
        assert actions(store).count("verification.complete") == 1
        assert consents[0] == consents[1]
        with pytest.raises(IdempotencyConflict):
            await service.record_consent(
                PROVIDER, "consent-x", USER, ConsentPurpose.SERVICE_AGREEMENT, "2027-02", consent_time=None
            )
