"""gRPC servicer of the identity process: proto ⇄ domain translation only.

Accounts, the publishing gate, the enforcement ladder, unlocking, the
eligibility policy, the verification flows, consents and erasure.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import grpc

from avgate.common.v1 import common_pb2
from avgate.identity.v1 import identity_pb2, identity_pb2_grpc
from avgate.kernel import convert
from avgate.kernel.convert import ProtoEnum, time_from_proto
from avgate.kernel.grpc.server import ServiceRegistration
from avgate.kernel.legal import LegalBasis
from avgate.kernel.principal import current_principal
from services.identity.domain import (
    Account,
    AccountFunction,
    AccountStatus,
    ActionFilter,
    EligibilityPolicy,
    EnforcementAction,
    EnforcementActionState,
    EnforcementActionType,
    IneligibilityCode,
    IneligibilityReason,
    IssueRequest,
    LiftKind,
    LiftRequest,
    MinorRule,
    NightWindow,
    PolicyUpdate,
    SubjectType,
    UserRef,
    VerificationLevel,
    VerificationMethod,
)
from services.identity.service import IdentityService
from services.identity.vault import Masked
from services.identity.verification.domain import (
    Consent,
    ConsentPurpose,
    Erasure,
    FailureReason,
    Flow,
    FlowState,
    GuardianInput,
    GuardianRelationship,
    IdentityInput,
)
from services.identity.verification.service import VerificationService

IDENTITY = "avgate.identity.v1.IdentityService"
LEVEL = ProtoEnum(identity_pb2.VerificationLevel, "VERIFICATION_LEVEL_", VerificationLevel)
SUBJECT = ProtoEnum(identity_pb2.SubjectType, "SUBJECT_TYPE_", SubjectType)
METHOD = ProtoEnum(identity_pb2.VerificationMethod, "VERIFICATION_METHOD_", VerificationMethod)
STATUS = ProtoEnum(identity_pb2.AccountStatus, "ACCOUNT_STATUS_", AccountStatus)
FUNCTION = ProtoEnum(identity_pb2.AccountFunction, "ACCOUNT_FUNCTION_", AccountFunction)
INELIGIBILITY = ProtoEnum(identity_pb2.IneligibilityCode, "INELIGIBILITY_CODE_", IneligibilityCode)
ACTION_TYPE = ProtoEnum(identity_pb2.EnforcementActionType, "ENFORCEMENT_ACTION_TYPE_", EnforcementActionType)
ACTION_STATE = ProtoEnum(identity_pb2.EnforcementActionState, "ENFORCEMENT_ACTION_STATE_", EnforcementActionState)
LIFT = ProtoEnum(identity_pb2.LiftKind, "LIFT_KIND_", LiftKind)
FLOW_STATE = ProtoEnum(identity_pb2.VerificationFlowState, "VERIFICATION_FLOW_STATE_", FlowState)
FAILURE = ProtoEnum(identity_pb2.VerificationFailureReason, "VERIFICATION_FAILURE_REASON_", FailureReason)
PURPOSE = ProtoEnum(identity_pb2.ConsentPurpose, "CONSENT_PURPOSE_", ConsentPurpose)
RELATIONSHIP = ProtoEnum(identity_pb2.GuardianRelationship, "GUARDIAN_RELATIONSHIP_", GuardianRelationship)


def _user(message: Any, field: str = "user") -> UserRef | None:
    if not message.HasField(field):
        return None
    ref = getattr(message, field)
    return UserRef(ref.tenant_id, ref.user_id)


def _user_to_proto(user: UserRef) -> common_pb2.UserRef:
    return common_pb2.UserRef(tenant_id=user.tenant_id, user_id=user.user_id)


def _basis_to_proto(basis: LegalBasis) -> common_pb2.LegalBasis:
    return common_pb2.LegalBasis(
        instrument=basis.instrument, article=basis.article, paragraph=basis.paragraph, note=basis.note
    )


# --------------------------------------------------------------------------- domain → proto


def action_to_proto(a: EnforcementAction) -> identity_pb2.EnforcementAction:
    return identity_pb2.EnforcementAction(
        action_id=a.action_id,
        user=_user_to_proto(a.user),
        type=ACTION_TYPE.to_proto(a.type),
        restricted_functions=[FUNCTION.to_proto(f) for f in a.restricted_functions],
        start_time=convert.timestamp(a.start_time),
        until_time=convert.timestamp(a.until_time),
        reason=a.reason,
        legal_basis=[_basis_to_proto(b) for b in a.legal_basis],
        evidence_incident_ids=list(a.evidence_incident_ids),
        decided_by=a.decided_by,
        automated=a.automated,
        state=ACTION_STATE.to_proto(a.state),
        end_time=convert.timestamp(a.end_time),
        ended_by=a.ended_by,
        end_reason=a.end_reason,
        create_time=convert.timestamp(a.create_time),
        issued_by_subject=a.issued_by_subject,
    )


def _masked(value: Masked | None) -> common_pb2.MaskedValue | None:
    return common_pb2.MaskedValue(masked=value.masked, kind=value.kind) if value is not None else None


Masks = tuple[Masked | None, Masked | None, Masked | None]


def account_to_proto(account: Account, now: datetime, masks: Masks = (None, None, None)) -> identity_pb2.Account:
    age = account.age_years(now.date())
    lockout = account.lockout_at(now)
    return identity_pb2.Account(
        masked_name=_masked(masks[0]),
        masked_id_number=_masked(masks[1]),
        masked_mobile=_masked(masks[2]),
        user=_user_to_proto(account.user),
        subject_type=SUBJECT.to_proto(account.subject_type),
        verification_level=LEVEL.to_proto(account.verification_level),
        methods=[METHOD.to_proto(m) for m in account.methods],
        verify_time=convert.timestamp(account.verify_time),
        status=STATUS.to_proto(account.status),
        minor=age is not None,
        age_years=age or 0,
        guardian_consent_recorded=account.guardian_consent_recorded,
        sensitive_consent_in_force=account.sensitive_consent_in_force,
        active_enforcement_actions=[action_to_proto(a) for a in account.active_actions],
        lockout=identity_pb2.Lockout(
            until_time=convert.timestamp(lockout.until), level=lockout.level, failed_attempts=lockout.failed_attempts
        )
        if lockout is not None
        else None,
    )


def flow_to_proto(f: Flow) -> identity_pb2.VerificationFlow:
    return identity_pb2.VerificationFlow(
        flow_id=f.flow_id,
        user=_user_to_proto(f.user),
        subject_type=SUBJECT.to_proto(f.subject_type),
        state=FLOW_STATE.to_proto(f.state),
        level_reached=LEVEL.to_proto(f.level_reached),
        methods=[METHOD.to_proto(m) for m in f.methods],
        masked_name=_masked(f.masked_name),
        masked_id_number=_masked(f.masked_id_number),
        masked_mobile=_masked(f.masked_mobile),
        guardian_consent_required=f.guardian_consent_required,
        failure_reason=FAILURE.to_proto(f.failure_reason),
        create_time=convert.timestamp(f.create_time),
        expire_time=convert.timestamp(f.expire_time),
        finish_time=convert.timestamp(f.finish_time),
    )


def consent_to_proto(c: Consent) -> identity_pb2.Consent:
    return identity_pb2.Consent(
        consent_id=c.consent_id,
        user=_user_to_proto(c.user),
        purpose=PURPOSE.to_proto(c.purpose),
        text_version=c.text_version,
        consent_time=convert.timestamp(c.consent_time),
        withdraw_time=convert.timestamp(c.withdraw_time),
        masked_guardian_name=_masked(c.masked_guardian_name),
    )


def erasure_to_proto(e: Erasure | None) -> identity_pb2.Erasure | None:
    if e is None:
        return None
    return identity_pb2.Erasure(
        erasure_id=e.erasure_id,
        user=_user_to_proto(e.user),
        erase_time=convert.timestamp(e.erase_time),
        ledger_entry_id=e.ledger_entry_id,
    )


def identity_from_proto(m: identity_pb2.StartVerificationRequest) -> IdentityInput:
    kind = m.WhichOneof("subject")
    if kind == "individual":
        i = m.individual
        return IdentityInput(SubjectType.INDIVIDUAL, i.name, i.resident_id_number, False, i.mobile)
    if kind == "organization":
        o = m.organization
        legacy = o.WhichOneof("code") == "legacy_organization_code"
        code = o.legacy_organization_code if legacy else o.unified_social_credit_code
        return IdentityInput(SubjectType.ORGANIZATION, o.organization_name, code, legacy, o.contact_mobile)
    return IdentityInput(None)


def reason_to_proto(r: IneligibilityReason) -> identity_pb2.IneligibilityReason:
    return identity_pb2.IneligibilityReason(
        code=INELIGIBILITY.to_proto(r.code),
        message=r.message,
        legal_basis=_basis_to_proto(r.legal_basis),
        enforcement_action_id=r.enforcement_action_id,
        until_time=convert.timestamp(r.until_time),
        required_level=LEVEL.to_proto(r.required_level),
    )


def policy_to_proto(p: EligibilityPolicy) -> identity_pb2.EligibilityPolicy:
    return identity_pb2.EligibilityPolicy(
        tenant_id=p.tenant_id,
        default_required_level=LEVEL.to_proto(p.default_required_level),
        function_requirements=[
            identity_pb2.FunctionRequirement(function=FUNCTION.to_proto(f), required_level=LEVEL.to_proto(level))
            for f, level in p.function_requirements
        ],
        one_identity_per_account=p.one_identity_per_account,
        minor_rules=[
            identity_pb2.MinorRule(
                under_age_years=m.under_age_years,
                denied_functions=[FUNCTION.to_proto(f) for f in m.denied_functions],
                night_denied_functions=[FUNCTION.to_proto(f) for f in m.night_denied_functions],
            )
            for m in p.minor_rules
        ],
        night_window=identity_pb2.NightWindow(
            start_minute=p.night_window.start_minute, end_minute=p.night_window.end_minute
        ),
        time_zone=p.time_zone,
        etag=p.etag,
        update_time=convert.timestamp(p.update_time),
    )


# --------------------------------------------------------------------------- proto → domain


def _functions(numbers: Any) -> tuple[Any, ...]:
    """Unknown or unspecified values become None: the use case names the field."""
    return tuple(FUNCTION.to_domain(n) for n in numbers)


def issue_from_proto(m: identity_pb2.IssueEnforcementActionRequest) -> IssueRequest:
    return IssueRequest(
        idempotency_key=m.idempotency_key,
        user=_user(m),
        type=ACTION_TYPE.to_domain(m.type),
        restricted_functions=_functions(m.restricted_functions),
        start_time=time_from_proto(m, "start_time"),
        until_time=time_from_proto(m, "until_time"),
        reason=m.reason,
        legal_basis=tuple(LegalBasis(b.instrument, b.article, b.paragraph, b.note) for b in m.legal_basis),
        evidence_incident_ids=tuple(m.evidence_incident_ids),
        decided_by=m.decided_by,
        automated=m.automated,
    )


def policy_update_from_proto(m: identity_pb2.UpdateEligibilityPolicyRequest) -> PolicyUpdate:
    p = m.policy
    return PolicyUpdate(
        tenant_id=p.tenant_id,
        etag=p.etag,
        paths=tuple(m.update_mask.paths),
        default_required_level=LEVEL.to_domain(p.default_required_level),
        function_requirements=tuple(
            (FUNCTION.to_domain(r.function), LEVEL.to_domain(r.required_level)) for r in p.function_requirements
        ),
        one_identity_per_account=p.one_identity_per_account,
        minor_rules=tuple(
            MinorRule(r.under_age_years, _functions(r.denied_functions), _functions(r.night_denied_functions))
            for r in p.minor_rules
        ),
        night_window=NightWindow(p.night_window.start_minute, p.night_window.end_minute)
        if p.HasField("night_window")
        else None,
        time_zone=p.time_zone,
    )


# --------------------------------------------------------------------------- servicer


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, service: IdentityService, verification: VerificationService):
        self._service = service
        self._verification = verification

    async def _account(self, user: UserRef) -> identity_pb2.Account:
        account = await self._service.get_account(current_principal(), user)
        masks = await self._verification.masked_identity(account.user)
        return account_to_proto(account, self._service.now(), masks)

    async def GetAccount(
        self, request: identity_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.GetAccountResponse:
        account = await self._service.get_account(current_principal(), _user(request))
        masks = await self._verification.masked_identity(account.user)
        return identity_pb2.GetAccountResponse(account=account_to_proto(account, self._service.now(), masks))

    async def StartVerification(
        self, request: identity_pb2.StartVerificationRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.StartVerificationResponse:
        flow = await self._verification.start(
            current_principal(), request.idempotency_key, _user(request), identity_from_proto(request)
        )
        return identity_pb2.StartVerificationResponse(flow=flow_to_proto(flow))

    async def SendVerificationCode(
        self, request: identity_pb2.SendVerificationCodeRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.SendVerificationCodeResponse:
        sent = await self._verification.send_code(current_principal(), request.flow_id)
        return identity_pb2.SendVerificationCodeResponse(
            flow=flow_to_proto(sent.flow),
            code_expire_time=convert.timestamp(sent.code_expire_time),
            next_send_time=convert.timestamp(sent.next_send_time),
        )

    async def ConfirmVerificationCode(
        self, request: identity_pb2.ConfirmVerificationCodeRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ConfirmVerificationCodeResponse:
        flow, remaining = await self._verification.confirm_code(current_principal(), request.flow_id, request.code)
        return identity_pb2.ConfirmVerificationCodeResponse(flow=flow_to_proto(flow), remaining_attempts=remaining)

    async def CompleteVerification(
        self, request: identity_pb2.CompleteVerificationRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.CompleteVerificationResponse:
        flow = await self._verification.complete(current_principal(), request.flow_id, request.idempotency_key)
        return identity_pb2.CompleteVerificationResponse(
            flow=flow_to_proto(flow), account=await self._account(flow.user)
        )

    async def GetVerificationFlow(
        self, request: identity_pb2.GetVerificationFlowRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.GetVerificationFlowResponse:
        flow = await self._verification.get_flow(current_principal(), request.flow_id)
        return identity_pb2.GetVerificationFlowResponse(flow=flow_to_proto(flow))

    async def RecordGuardianConsent(
        self, request: identity_pb2.RecordGuardianConsentRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.RecordGuardianConsentResponse:
        g = request.guardian
        flow, consent = await self._verification.record_guardian_consent(
            current_principal(),
            GuardianInput(
                idempotency_key=request.idempotency_key,
                flow_id=request.flow_id,
                guardian=IdentityInput(SubjectType.INDIVIDUAL, g.name, g.resident_id_number, False, g.mobile)
                if request.HasField("guardian")
                else None,
                relationship=RELATIONSHIP.to_domain(request.relationship),
                text_version=request.consent_text_version,
                consent_time=time_from_proto(request, "consent_time"),
            ),
        )
        return identity_pb2.RecordGuardianConsentResponse(flow=flow_to_proto(flow), consent=consent_to_proto(consent))

    async def RecordConsent(
        self, request: identity_pb2.RecordConsentRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.RecordConsentResponse:
        consent = await self._verification.record_consent(
            current_principal(),
            request.idempotency_key,
            _user(request),
            PURPOSE.to_domain(request.purpose),
            request.text_version,
            time_from_proto(request, "consent_time"),
        )
        return identity_pb2.RecordConsentResponse(consent=consent_to_proto(consent))

    async def ListConsents(
        self, request: identity_pb2.ListConsentsRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ListConsentsResponse:
        found, token = await self._verification.list_consents(
            current_principal(), _user(request), page_size=request.page.page_size, page_token=request.page.page_token
        )
        return identity_pb2.ListConsentsResponse(
            consents=[consent_to_proto(c) for c in found], page=common_pb2.PageResponse(next_page_token=token)
        )

    async def WithdrawConsent(
        self, request: identity_pb2.WithdrawConsentRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.WithdrawConsentResponse:
        consent, erasure = await self._verification.withdraw_consent(
            current_principal(), request.idempotency_key, request.consent_id, time_from_proto(request, "withdraw_time")
        )
        return identity_pb2.WithdrawConsentResponse(
            consent=consent_to_proto(consent), erasure=erasure_to_proto(erasure)
        )

    async def RequestErasure(
        self, request: identity_pb2.RequestErasureRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.RequestErasureResponse:
        erasure = await self._verification.request_erasure(
            current_principal(), request.idempotency_key, _user(request), request.reason
        )
        return identity_pb2.RequestErasureResponse(
            erasure=erasure_to_proto(erasure), account=await self._account(erasure.user)
        )

    async def CheckEligibility(
        self, request: identity_pb2.CheckEligibilityRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.CheckEligibilityResponse:
        answer = await self._service.check_eligibility(
            current_principal(), _user(request), FUNCTION.to_domain(request.action)
        )
        return identity_pb2.CheckEligibilityResponse(
            allowed=answer.allowed,
            reasons=[reason_to_proto(r) for r in answer.reasons],
            verification_level=LEVEL.to_proto(answer.verification_level),
            policy_etag=answer.policy_etag,
            evaluate_time=convert.timestamp(answer.evaluate_time),
        )

    async def IssueEnforcementAction(
        self, request: identity_pb2.IssueEnforcementActionRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.IssueEnforcementActionResponse:
        action, account = await self._service.issue(current_principal(), issue_from_proto(request))
        return identity_pb2.IssueEnforcementActionResponse(
            action=action_to_proto(action), account=account_to_proto(account, self._service.now())
        )

    async def LiftEnforcementAction(
        self, request: identity_pb2.LiftEnforcementActionRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.LiftEnforcementActionResponse:
        action, account = await self._service.lift(
            current_principal(),
            LiftRequest(
                idempotency_key=request.idempotency_key,
                action_id=request.action_id,
                kind=LIFT.to_domain(request.kind),
                reason=request.reason,
                decided_by=request.decided_by,
                appeal_reference=request.appeal_reference,
            ),
        )
        return identity_pb2.LiftEnforcementActionResponse(
            action=action_to_proto(action), account=account_to_proto(account, self._service.now())
        )

    async def GetEnforcementAction(
        self, request: identity_pb2.GetEnforcementActionRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.GetEnforcementActionResponse:
        action = await self._service.get_action(current_principal(), request.action_id)
        return identity_pb2.GetEnforcementActionResponse(action=action_to_proto(action))

    async def ListEnforcementActions(
        self, request: identity_pb2.ListEnforcementActionsRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ListEnforcementActionsResponse:
        time_range = request.create_time_range
        ranged = request.HasField("create_time_range")
        action_filter = ActionFilter(
            states=ACTION_STATE.to_domain_list(request.states, "states"),
            types=ACTION_TYPE.to_domain_list(request.types, "types"),
            created_from=time_from_proto(time_range, "start_time", "create_time_range.start_time") if ranged else None,
            created_before=time_from_proto(time_range, "end_time", "create_time_range.end_time") if ranged else None,
        )
        actions, next_token = await self._service.list_actions(
            current_principal(),
            _user(request),
            action_filter,
            page_size=request.page.page_size,
            page_token=request.page.page_token,
        )
        return identity_pb2.ListEnforcementActionsResponse(
            actions=[action_to_proto(a) for a in actions], page=common_pb2.PageResponse(next_page_token=next_token)
        )

    async def UnlockAccount(
        self, request: identity_pb2.UnlockAccountRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.UnlockAccountResponse:
        account = await self._service.unlock(current_principal(), _user(request), request.reason)
        return identity_pb2.UnlockAccountResponse(account=account_to_proto(account, self._service.now()))

    async def GetEligibilityPolicy(
        self, request: identity_pb2.GetEligibilityPolicyRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.GetEligibilityPolicyResponse:
        policy = await self._service.get_policy(current_principal(), request.tenant_id)
        return identity_pb2.GetEligibilityPolicyResponse(policy=policy_to_proto(policy))

    async def UpdateEligibilityPolicy(
        self, request: identity_pb2.UpdateEligibilityPolicyRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.UpdateEligibilityPolicyResponse:
        policy = await self._service.update_policy(current_principal(), policy_update_from_proto(request))
        return identity_pb2.UpdateEligibilityPolicyResponse(policy=policy_to_proto(policy))


def registrations(identity: IdentityServicer) -> list[ServiceRegistration]:
    return [ServiceRegistration(identity, identity_pb2_grpc.add_IdentityServiceServicer_to_server, [IDENTITY])]
