"""Identity's rules, as IdentityService applies them over the in-memory store
(no gRPC, no database): the enforcement ladder (Art. 14), the publishing
gate's rules for minors and verification levels (Art. 7, 8), idempotency and
the eligibility policy's etag."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from avgate.kernel import legal
from avgate.kernel.errors import (
    FailedPrecondition,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from avgate.kernel.legal import LegalBasis
from avgate.kernel.principal import Principal, Role
from services.identity.domain import (
    Account,
    AccountFunction,
    AccountStatus,
    EnforcementActionState,
    EnforcementActionType,
    EnforcementEvent,
    IneligibilityCode,
    IssueRequest,
    LiftKind,
    LiftRequest,
    PolicyUpdate,
    UserRef,
    VerificationLevel,
)
from services.identity.service import IdentityService
from services.identity.store import InMemoryIdentityStore

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
TENANT = "video-co"
PROVIDER = Principal(role=Role.PROVIDER, subject="key-video-co", tenant_id=TENANT)
OTHER_PROVIDER = Principal(role=Role.PROVIDER, subject="key-other", tenant_id="other-co")
OPERATOR = Principal(role=Role.OPERATOR, subject="ops-1")
USER = UserRef(TENANT, "u-1")
BASIS = (LegalBasis(legal.NAVIS, "14", note="service agreement"),)


class Clock:
    def __init__(self, now: datetime = T0):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> InMemoryIdentityStore:
    return InMemoryIdentityStore()


@pytest.fixture
def service(store: InMemoryIdentityStore, clock: Clock) -> IdentityService:
    return IdentityService(store, clock=clock)


def issue_request(type: EnforcementActionType = EnforcementActionType.WARNING, **changes: Any) -> IssueRequest:
    request = IssueRequest(
        idempotency_key="k-1",
        user=USER,
        type=type,
        restricted_functions=(),
        start_time=None,
        until_time=None,
        reason="repeated spam",
        legal_basis=BASIS,
        evidence_incident_ids=("inc-1",),
        decided_by="moderator-7",
        automated=False,
    )
    return replace(request, **changes)


def lift_request(action_id: str, **changes: Any) -> LiftRequest:
    return replace(
        LiftRequest("lift-1", action_id, LiftKind.LIFT, "appeal upheld", "moderator-7", "appeal-9"), **changes
    )


def verified(user: UserRef = USER, **changes: Any) -> Account:
    return replace(Account(user, verification_level=VerificationLevel.AUTHORITATIVELY_VERIFIED), **changes)


async def allowed(service: IdentityService, function: AccountFunction) -> set[IneligibilityCode]:
    answer = await service.check_eligibility(PROVIDER, USER, function)
    assert answer.allowed == (not answer.reasons)
    return {r.code for r in answer.reasons}


class TestEnforcementLadder:
    async def test_a_warning_leaves_the_account_active(self, service: IdentityService) -> None:
        _, account = await service.issue(PROVIDER, issue_request())

        assert account.status is AccountStatus.ACTIVE

    async def test_a_function_restriction_closes_only_the_functions_it_names(
        self, service: IdentityService, store: InMemoryIdentityStore
    ) -> None:
        store.put_account(verified(), T0)
        request = issue_request(
            EnforcementActionType.FUNCTION_RESTRICTION, restricted_functions=(AccountFunction.COMMENT,)
        )

        action, account = await service.issue(PROVIDER, request)

        assert account.status is AccountStatus.RESTRICTED
        assert await allowed(service, AccountFunction.COMMENT) == {IneligibilityCode.FUNCTION_RESTRICTED}
        assert await allowed(service, AccountFunction.PUBLISH) == set()
        answer = await service.check_eligibility(PROVIDER, USER, AccountFunction.COMMENT)
        assert answer.reasons[0].enforcement_action_id == action.action_id

    async def test_a_suspension_stops_updating_but_not_messages(
        self, service: IdentityService, store: InMemoryIdentityStore
    ) -> None:
        store.put_account(verified(), T0)

        _, account = await service.issue(PROVIDER, issue_request(EnforcementActionType.SUSPENSION_OF_UPDATING))

        assert account.status is AccountStatus.SUSPENDED
        assert await allowed(service, AccountFunction.PUBLISH) == {IneligibilityCode.UPDATING_SUSPENDED}
        assert await allowed(service, AccountFunction.DIRECT_MESSAGE) == set()

    async def test_a_closed_account_cannot_publish_or_message(
        self, service: IdentityService, store: InMemoryIdentityStore
    ) -> None:
        store.put_account(verified(), T0)

        _, account = await service.issue(PROVIDER, issue_request(EnforcementActionType.ACCOUNT_CLOSURE))

        assert account.status is AccountStatus.CLOSED
        assert await allowed(service, AccountFunction.PUBLISH) == {IneligibilityCode.ACCOUNT_CLOSED}
        assert await allowed(service, AccountFunction.DIRECT_MESSAGE) == {IneligibilityCode.ACCOUNT_CLOSED}

    async def test_the_highest_rung_wins_and_lifting_it_falls_back_to_the_next(self, service: IdentityService) -> None:
        await service.issue(PROVIDER, issue_request(EnforcementActionType.SUSPENSION_OF_UPDATING, idempotency_key="a"))
        closure, account = await service.issue(
            PROVIDER, issue_request(EnforcementActionType.ACCOUNT_CLOSURE, idempotency_key="b")
        )
        assert account.status is AccountStatus.CLOSED

        lifted, account = await service.lift(PROVIDER, lift_request(closure.action_id))

        assert lifted.state is EnforcementActionState.LIFTED
        assert account.status is AccountStatus.SUSPENDED

    async def test_a_suspension_past_its_end_no_longer_counts_before_the_expiry_job_runs(
        self, service: IdentityService, clock: Clock
    ) -> None:
        request = issue_request(EnforcementActionType.SUSPENSION_OF_UPDATING, until_time=T0 + timedelta(days=7))
        await service.issue(PROVIDER, request)
        clock.now = T0 + timedelta(days=8)

        account = await service.get_account(PROVIDER, USER)

        assert account.status is AccountStatus.ACTIVE and account.active_actions == ()

    async def test_the_expiry_job_ends_it_with_a_ledger_entry_and_an_incident(
        self, service: IdentityService, store: InMemoryIdentityStore, clock: Clock
    ) -> None:
        request = issue_request(EnforcementActionType.SUSPENSION_OF_UPDATING, until_time=T0 + timedelta(days=7))
        action, _ = await service.issue(PROVIDER, request)
        clock.now = T0 + timedelta(days=8)

        expired = await service.expire_due()

        assert [a.action_id for a in expired] == [action.action_id]
        assert [e.action for e in store.ledger] == ["enforcement.issue", "enforcement.expire"]
        assert store.ledger[-1].legal_basis == "NAVIS-2019 Art. 14"
        assert [r.event for r in store.reported] == [EnforcementEvent.ISSUE, EnforcementEvent.EXPIRE]

    async def test_an_action_issued_for_later_changes_the_status_when_it_starts(
        self, service: IdentityService, store: InMemoryIdentityStore, clock: Clock
    ) -> None:
        later = T0 + timedelta(hours=1)
        _, account = await service.issue(
            PROVIDER, issue_request(EnforcementActionType.ACCOUNT_CLOSURE, start_time=later)
        )
        assert account.status is AccountStatus.ACTIVE
        clock.now = later + timedelta(minutes=1)

        await service.start_due()
        await service.start_due()

        assert (await service.get_account(PROVIDER, USER)).status is AccountStatus.CLOSED
        assert [e.action for e in store.ledger] == ["enforcement.issue", "account.status"]

    async def test_the_issue_entry_cites_every_basis_given(
        self, service: IdentityService, store: InMemoryIdentityStore
    ) -> None:
        bases = (*BASIS, LegalBasis(legal.NAVIS, "12", "2"))

        await service.issue(PROVIDER, issue_request(legal_basis=bases))

        assert store.ledger[0].legal_basis == "NAVIS-2019 Art. 14; NAVIS-2019 Art. 12(2)"

    async def test_the_lift_entry_cites_article_14(
        self, service: IdentityService, store: InMemoryIdentityStore
    ) -> None:
        action, _ = await service.issue(PROVIDER, issue_request())

        await service.lift(PROVIDER, lift_request(action.action_id, kind=LiftKind.REVERSE))

        assert store.ledger[-1].action == "enforcement.reverse"
        assert store.ledger[-1].legal_basis == legal.ART_14

    async def test_a_lifted_action_cannot_be_lifted_again_under_another_key(self, service: IdentityService) -> None:
        action, _ = await service.issue(PROVIDER, issue_request())
        await service.lift(PROVIDER, lift_request(action.action_id))

        with pytest.raises(FailedPrecondition):
            await service.lift(PROVIDER, lift_request(action.action_id, idempotency_key="lift-2"))


class TestWhoMayAct:
    async def test_a_provider_may_not_name_another_tenants_user(self, service: IdentityService) -> None:
        with pytest.raises(PermissionDenied):
            await service.issue(OTHER_PROVIDER, issue_request())

    async def test_another_tenants_action_is_not_found(self, service: IdentityService) -> None:
        action, _ = await service.issue(PROVIDER, issue_request())

        with pytest.raises(NotFound):
            await service.get_action(OTHER_PROVIDER, action.action_id)
        with pytest.raises(NotFound):
            await service.lift(OTHER_PROVIDER, lift_request(action.action_id))

    async def test_an_operator_acts_on_any_tenant_it_names(self, service: IdentityService) -> None:
        action, _ = await service.issue(OPERATOR, issue_request())

        assert (await service.get_action(PROVIDER, action.action_id)).issued_by_subject == "ops-1"

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"idempotency_key": ""}, "idempotency_key"),
            ({"type": None}, "type"),
            ({"reason": "call 13800138000"}, "reason"),
            ({"legal_basis": ()}, "legal_basis"),
            ({"until_time": T0 + timedelta(days=1)}, "until_time"),  # a warning has no end
            ({"restricted_functions": (AccountFunction.COMMENT,)}, "restricted_functions"),
        ],
        ids=["no-key", "no-type", "mobile-in-reason", "no-basis", "warning-with-end", "functions-on-a-warning"],
    )
    async def test_bad_input_names_the_field(
        self, service: IdentityService, changes: dict[str, Any], field: str
    ) -> None:
        with pytest.raises(InvalidArgument) as raised:
            await service.issue(PROVIDER, issue_request(**changes))

        assert field in [v.field for v in raised.value.violations]


class TestIdempotency:
    async def test_a_retry_returns_the_same_action_and_writes_once(
        self, service: IdentityService, store: InMemoryIdentityStore
    ) -> None:
        first, _ = await service.issue(PROVIDER, issue_request())
        again, _ = await service.issue(PROVIDER, issue_request())

        assert again == first
        assert len(store.ledger) == 1 and len(store.reported) == 1

    async def test_the_same_key_with_another_request_is_a_conflict(self, service: IdentityService) -> None:
        await service.issue(PROVIDER, issue_request())

        with pytest.raises(IdempotencyConflict):
            await service.issue(PROVIDER, issue_request(reason="something else"))

    async def test_a_lift_retried_returns_the_lifted_action(
        self, service: IdentityService, store: InMemoryIdentityStore
    ) -> None:
        action, _ = await service.issue(PROVIDER, issue_request())
        first, _ = await service.lift(PROVIDER, lift_request(action.action_id))

        again, _ = await service.lift(PROVIDER, lift_request(action.action_id))

        assert again == first
        assert [e.action for e in store.ledger] == ["enforcement.issue", "enforcement.lift"]

    async def test_a_lift_key_reused_with_another_reason_is_a_conflict(self, service: IdentityService) -> None:
        action, _ = await service.issue(PROVIDER, issue_request())
        await service.lift(PROVIDER, lift_request(action.action_id))

        with pytest.raises(IdempotencyConflict):
            await service.lift(PROVIDER, lift_request(action.action_id, reason="changed my mind"))


class TestEligibilityAndMinors:
    async def test_an_unverified_user_may_not_publish(self, service: IdentityService) -> None:
        answer = await service.check_eligibility(PROVIDER, USER, AccountFunction.PUBLISH)

        assert not answer.allowed
        (reason,) = answer.reasons
        assert reason.code is IneligibilityCode.VERIFICATION_LEVEL_TOO_LOW
        assert reason.required_level is VerificationLevel.AUTHORITATIVELY_VERIFIED
        assert reason.legal_basis.cite() == legal.ART_8
        assert answer.policy_etag == "0"

    async def test_a_policy_can_ask_less_for_one_function(
        self, service: IdentityService, store: InMemoryIdentityStore
    ) -> None:
        store.put_account(Account(USER, verification_level=VerificationLevel.PHONE_VERIFIED), T0)
        await service.update_policy(
            PROVIDER,
            PolicyUpdate(
                TENANT,
                etag="0",
                paths=("function_requirements",),
                function_requirements=((AccountFunction.COMMENT, VerificationLevel.PHONE_VERIFIED),),
            ),
        )

        assert await allowed(service, AccountFunction.COMMENT) == set()
        assert await allowed(service, AccountFunction.PUBLISH) == {IneligibilityCode.VERIFICATION_LEVEL_TOO_LOW}

    async def test_a_minor_may_not_host_a_live_stream_or_tip(
        self, service: IdentityService, store: InMemoryIdentityStore
    ) -> None:
        store.put_account(verified(minor_until=date(2029, 6, 1)), T0)  # 15 on T0

        assert await allowed(service, AccountFunction.LIVE_STREAM) == {IneligibilityCode.MINOR_RESTRICTED}
        assert await allowed(service, AccountFunction.TIPPING) == {IneligibilityCode.MINOR_RESTRICTED}
        assert await allowed(service, AccountFunction.PUBLISH) == set()

    async def test_a_minor_may_not_publish_at_night(
        self, service: IdentityService, store: InMemoryIdentityStore, clock: Clock
    ) -> None:
        store.put_account(verified(minor_until=date(2027, 6, 1)), T0)  # 17
        clock.now = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai

        answer = await service.check_eligibility(PROVIDER, USER, AccountFunction.PUBLISH)

        (reason,) = answer.reasons
        assert reason.code is IneligibilityCode.MINOR_NIGHT_HOURS
        assert reason.until_time == datetime(2026, 12, 1, 22, 0, tzinfo=UTC)  # 06:00 in Shanghai
        assert reason.legal_basis.cite() == legal.ART_7

    async def test_an_under_14_needs_a_guardians_consent_on_record(
        self, service: IdentityService, store: InMemoryIdentityStore
    ) -> None:
        store.put_account(verified(minor_until=date(2031, 6, 1)), T0)  # 13

        assert IneligibilityCode.GUARDIAN_CONSENT_MISSING in await allowed(service, AccountFunction.COMMENT)

        store.put_account(verified(minor_until=date(2031, 6, 1), guardian_consent_recorded=True), T0)
        assert await allowed(service, AccountFunction.COMMENT) == set()

    async def test_an_adult_is_not_held_to_the_minors_rules(
        self, service: IdentityService, store: InMemoryIdentityStore
    ) -> None:
        store.put_account(verified(minor_until=date(2026, 11, 30)), T0)  # turned 18 yesterday

        assert await allowed(service, AccountFunction.LIVE_STREAM) == set()


class TestEligibilityPolicy:
    async def test_each_update_bumps_the_etag_and_is_ledgered(
        self, service: IdentityService, store: InMemoryIdentityStore
    ) -> None:
        update = PolicyUpdate(TENANT, etag="0", paths=("one_identity_per_account",), one_identity_per_account=True)

        first = await service.update_policy(PROVIDER, update)
        second = await service.update_policy(PROVIDER, replace(update, etag="1"))

        assert (first.etag, second.etag) == ("1", "2")
        assert (await service.get_policy(PROVIDER, "")).one_identity_per_account
        assert [e.legal_basis for e in store.ledger] == [legal.ART_7_8, legal.ART_7_8]

    async def test_a_stale_etag_is_refused(self, service: IdentityService) -> None:
        update = PolicyUpdate(TENANT, etag="0", paths=("one_identity_per_account",), one_identity_per_account=True)
        await service.update_policy(PROVIDER, update)

        with pytest.raises(FailedPrecondition):
            await service.update_policy(PROVIDER, update)

    async def test_an_unknown_time_zone_names_the_field(self, service: IdentityService) -> None:
        with pytest.raises(InvalidArgument) as raised:
            await service.update_policy(PROVIDER, PolicyUpdate(TENANT, "", ("time_zone",), time_zone="Mars/Olympus"))

        assert [v.field for v in raised.value.violations] == ["policy.time_zone"]
