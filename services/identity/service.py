"""Identity's use cases for accounts, the publishing gate, the enforcement
ladder and the eligibility policy.

Who may do what: providers act on their own tenant's users only (a UserRef
naming another tenant is PERMISSION_DENIED; another tenant's action id is
NOT_FOUND); an avgate service acting for a provider (screening asking
CheckEligibility) is that provider (`Principal.effective`); operators act on
any tenant they name. Regulators read enforcement through reporting's
incidents, not here.

Every change writes its ledger entry in the same transaction; enforcement
changes also hand an incident to reporting (services.identity.handoff).
"""

from __future__ import annotations

import builtins
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from avgate.kernel import legal
from avgate.kernel.errors import (
    FailedPrecondition,
    FieldChecker,
    FieldViolation,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from avgate.kernel.paging import check_page_size, decode_page_token, encode_page_token, page_limit
from avgate.kernel.principal import TENANT_ID, Principal, Role
from avgate.ledger.entry import LedgerEntry
from services.identity.domain import (
    MINUTES_PER_DAY,
    POLICY_FIELDS,
    Account,
    AccountFunction,
    AccountStatus,
    ActionFilter,
    Eligibility,
    EligibilityPolicy,
    EnforcementAction,
    EnforcementActionState,
    EnforcementActionType,
    EnforcementEvent,
    IssueRequest,
    LiftKind,
    LiftRequest,
    PolicyUpdate,
    UserRef,
    evaluate,
    new_action_id,
    sorted_functions,
    status_from,
)
from services.identity.store import EXPIRY_ACTOR, Ended, IdempotencyKeyTaken, IdentityStore, PolicyChangedConcurrently

MAX_REASON = 2000
MAX_DECIDED_BY = 200
MAX_UNLOCK_REASON = 500
MAX_KEY = 128
MAX_USER_ID = 256
MAX_EVIDENCE = 100


def _now() -> datetime:
    return datetime.now(UTC)


def request_digest(document: dict[str, Any]) -> bytes:
    """The SHA-256 of a request's JSON (sorted keys): what an idempotency key's retry must match."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).digest()


def iso(value: datetime | None) -> str | None:
    """UTC ISO 8601, as ledger entries carry times."""
    return value.astimezone(UTC).isoformat() if value is not None else None


def expiry_origin(action: EnforcementAction) -> Principal:
    """Whom the expiry job acts for: the tenant whose action reached its end (reporting records the incident there)."""
    return Principal(role=Role.PROVIDER, subject=EXPIRY_ACTOR, tenant_id=action.user.tenant_id)


def expiry_audit(action: EnforcementAction) -> LedgerEntry:
    assert action.end_time is not None
    return LedgerEntry(
        action="enforcement.expire",
        subject_type="enforcement_action",
        subject_id=action.action_id,
        actor=Principal(role=Role.SERVICE, subject="identity", origin=expiry_origin(action)),
        legal_basis=legal.ART_14,
        reason="reached its until_time",
        tenant_id=action.user.tenant_id,
        data={"user_id": action.user.user_id, "type": action.type.value, "until_time": iso(action.until_time)},
        idempotency_key=f"enforcement.expire:{action.action_id}",
        occurred_at=action.end_time,
    )


def status_audit(user: UserRef, before: AccountStatus, after: AccountStatus, now: datetime) -> LedgerEntry:
    """An account's status changed because an action issued earlier reached its start time."""
    return LedgerEntry(
        action="account.status",
        subject_type="account",
        subject_id=f"{user.tenant_id}/{user.user_id}",
        actor=Principal(
            role=Role.SERVICE,
            subject="identity",
            origin=Principal(role=Role.PROVIDER, subject=EXPIRY_ACTOR, tenant_id=user.tenant_id),
        ),
        legal_basis=legal.ART_14,
        reason="an enforcement action reached its start time",
        tenant_id=user.tenant_id,
        data={"user_id": user.user_id, "from": before.value, "to": after.value},
        occurred_at=now,
    )


def request_tenant(caller: Principal, tenant_id: str, path: str) -> str:
    """The tenant a request may act on: the provider's own (PERMISSION_DENIED for another), any for operators."""
    caller.require_role(Role.PROVIDER, Role.OPERATOR)
    if caller.effective.role is Role.PROVIDER:
        own = caller.require_tenant()
        if tenant_id not in ("", own):
            raise PermissionDenied(f"{path} names another tenant")
        return own
    if not TENANT_ID.fullmatch(tenant_id):
        raise InvalidArgument(FieldViolation(path, "required: 2-63 of a-z, 0-9, '-'"))
    return tenant_id


def request_user(caller: Principal, user: UserRef | None, check: FieldChecker, path: str = "user") -> UserRef:
    """The user a request names, in a tenant the caller may act on (violations go to `check`)."""
    if user is None:
        check.add(path, "must be set")
        check.raise_if_any()
        raise AssertionError("unreachable")
    tenant = request_tenant(caller, user.tenant_id, f"{path}.tenant_id")
    check.identifier(user.user_id, f"{path}.user_id", max_length=MAX_USER_ID)
    return UserRef(tenant, user.user_id)


class IdentityService:
    def __init__(self, store: IdentityStore, clock: Callable[[], datetime] = _now):
        self._store = store
        self._clock = clock

    def now(self) -> datetime:
        """The service's clock (injected in tests), for what the servicer derives from it (age, lockout)."""
        return self._clock()

    # ----------------------------------------------------------------------- who

    @staticmethod
    def _may_see(caller: Principal, action: EnforcementAction) -> bool:
        effective = caller.effective
        if effective.role is Role.OPERATOR:
            return True
        return effective.role is Role.PROVIDER and action.user.tenant_id == effective.tenant_id

    # ----------------------------------------------------------------------- accounts and the gate

    async def get_account(self, caller: Principal, user: UserRef | None) -> Account:
        check = FieldChecker()
        ref = request_user(caller, user, check)
        check.raise_if_any()
        account = await self._store.account(ref)
        return self._as_of(account or Account(ref), self._clock())

    @staticmethod
    def _as_of(account: Account, now: datetime) -> Account:
        """The account as it stands at `now`: actions past their end no longer count, whether
        or not the expiry job has recorded that yet."""
        active = tuple(a for a in account.active_actions if a.until_time is None or now < a.until_time)
        status = status_from(active, now, erased=account.status is AccountStatus.ERASED)
        return replace(account, active_actions=active, status=status)

    async def check_eligibility(
        self, caller: Principal, user: UserRef | None, function: AccountFunction | None
    ) -> Eligibility:
        check = FieldChecker()
        ref = request_user(caller, user, check)
        check.require(function is not None, "action", "must be a known function")
        check.raise_if_any()
        assert function is not None
        now = self._clock()
        account, policy = await self._store.eligibility_inputs(ref)
        reasons = evaluate(account or Account(ref), policy, function, now)
        level = account.verification_level if account is not None else Account(ref).verification_level
        return Eligibility(not reasons, reasons, level, policy.etag, now)

    async def unlock(self, caller: Principal, user: UserRef | None, reason: str) -> Account:
        check = FieldChecker()
        ref = request_user(caller, user, check)
        check.text(reason, "reason", max_length=MAX_UNLOCK_REASON)
        check.raise_if_any()
        now = self._clock()
        audit = LedgerEntry(
            action="account.unlock",
            subject_type="account",
            subject_id=f"{ref.tenant_id}/{ref.user_id}",
            actor=caller,
            legal_basis=legal.ART_8,
            reason=reason,
            tenant_id=ref.tenant_id,
            data={"user_id": ref.user_id},
            occurred_at=now,
        )
        return self._as_of(await self._store.unlock(ref, audit, now), now)

    # ----------------------------------------------------------------------- enforcement

    def _check_issue(self, caller: Principal, request: IssueRequest, now: datetime) -> tuple[UserRef, datetime]:
        check = FieldChecker()
        ref = request_user(caller, request.user, check)
        check.identifier(request.idempotency_key, "idempotency_key", max_length=MAX_KEY)
        kind = request.type
        check.require(kind is not None, "type", "must be set")
        if kind is EnforcementActionType.FUNCTION_RESTRICTION:
            check.require(bool(request.restricted_functions), "restricted_functions", "required for a restriction")
            for i, f in enumerate(request.restricted_functions):
                check.require(f is not None, f"restricted_functions[{i}]", "must be a known function")
        elif request.restricted_functions:
            check.add("restricted_functions", "only a function restriction names functions")
        start = request.start_time or now
        if request.until_time is not None:
            if kind in (EnforcementActionType.WARNING, EnforcementActionType.ACCOUNT_CLOSURE):
                check.add("until_time", "a warning or an account closure has no end time")
            elif request.until_time <= start:
                check.add("until_time", "must be after start_time")
            elif request.until_time <= now:
                check.add("until_time", "must be in the future")
        check.text(request.reason, "reason", max_length=MAX_REASON)
        if not 1 <= len(request.legal_basis) <= 20:
            check.add("legal_basis", "must name 1 to 20 provisions")
        for i, basis in enumerate(request.legal_basis):
            check.text(basis.instrument, f"legal_basis[{i}].instrument", max_length=64)
            check.text(basis.article, f"legal_basis[{i}].article", max_length=16)
            check.text(basis.paragraph, f"legal_basis[{i}].paragraph", max_length=16, required=False)
            check.text(basis.note, f"legal_basis[{i}].note", max_length=MAX_REASON, required=False)
        check.require(len(request.evidence_incident_ids) <= MAX_EVIDENCE, "evidence_incident_ids", "at most 100")
        for i, incident_id in enumerate(request.evidence_incident_ids):
            check.identifier(incident_id, f"evidence_incident_ids[{i}]", max_length=MAX_KEY)
        check.text(request.decided_by, "decided_by", max_length=MAX_DECIDED_BY)
        check.raise_if_any()
        return ref, start

    @staticmethod
    def _issue_hash(ref: UserRef, request: IssueRequest) -> bytes:
        assert request.type is not None
        return request_digest(
            {
                "user": [ref.tenant_id, ref.user_id],
                "type": request.type.value,
                "functions": sorted({f.value for f in request.restricted_functions if f is not None}),
                "start_time": iso(request.start_time),  # unset means "now": a retry later is the same request
                "until_time": iso(request.until_time),
                "reason": request.reason,
                "legal_basis": [b.to_json() for b in request.legal_basis],
                "evidence": list(request.evidence_incident_ids),
                "decided_by": request.decided_by,
                "automated": request.automated,
            }
        )

    async def _replay(self, action: EnforcementAction, digest: bytes) -> tuple[EnforcementAction, Account]:
        if action.request_hash != digest:
            raise IdempotencyConflict(
                "enforcement_action", action.idempotency_key, "this idempotency key was used with another request"
            )
        account = await self._store.account(action.user)
        assert account is not None
        return action, self._as_of(account, self._clock())

    async def issue(self, caller: Principal, request: IssueRequest) -> tuple[EnforcementAction, Account]:
        now = self._clock()
        ref, start = self._check_issue(caller, request, now)
        digest = self._issue_hash(ref, request)
        earlier = await self._store.find_action_by_key(ref.tenant_id, request.idempotency_key)
        if earlier is not None:
            return await self._replay(earlier, digest)
        assert request.type is not None
        action = EnforcementAction(
            action_id=new_action_id(),
            user=ref,
            type=request.type,
            restricted_functions=sorted_functions([f for f in request.restricted_functions if f is not None]),
            start_time=start,
            until_time=request.until_time,
            reason=request.reason,
            legal_basis=request.legal_basis,
            evidence_incident_ids=request.evidence_incident_ids,
            decided_by=request.decided_by,
            automated=request.automated,
            state=EnforcementActionState.ACTIVE,
            create_time=now,
            issued_by_subject=caller.effective.subject,
            idempotency_key=request.idempotency_key,
            request_hash=digest,
        )
        audit = LedgerEntry(
            action="enforcement.issue",
            subject_type="enforcement_action",
            subject_id=action.action_id,
            actor=caller,
            legal_basis="; ".join(b.cite() for b in action.legal_basis),
            reason=action.reason,
            tenant_id=ref.tenant_id,
            data={
                "user_id": ref.user_id,
                "type": action.type.value,
                "restricted_functions": [f.value for f in action.restricted_functions],
                "start_time": iso(action.start_time),
                "until_time": iso(action.until_time),
                "evidence_incident_ids": list(action.evidence_incident_ids),
                "decided_by": action.decided_by,
                "automated": action.automated,
            },
            idempotency_key=f"enforcement.issue:{ref.tenant_id}:{request.idempotency_key}",
            occurred_at=now,
        )
        try:
            account = await self._store.issue(action, audit, caller, now)
        except IdempotencyKeyTaken:
            # A concurrent call with the same key won: answer as its retry would be answered.
            earlier = await self._store.find_action_by_key(ref.tenant_id, request.idempotency_key)
            assert earlier is not None
            return await self._replay(earlier, digest)
        return action, self._as_of(account, now)

    async def lift(self, caller: Principal, request: LiftRequest) -> tuple[EnforcementAction, Account]:
        caller.require_role(Role.PROVIDER, Role.OPERATOR)
        check = FieldChecker()
        check.identifier(request.idempotency_key, "idempotency_key", max_length=MAX_KEY)
        check.require(bool(request.action_id), "action_id", "must be set")
        check.require(request.kind is not None, "kind", "must be LIFT or REVERSE")
        check.text(request.reason, "reason", max_length=MAX_REASON)
        check.text(request.decided_by, "decided_by", max_length=MAX_DECIDED_BY)
        check.text(request.appeal_reference, "appeal_reference", max_length=MAX_KEY, required=False)
        check.raise_if_any()
        assert request.kind is not None
        kind = request.kind
        digest = request_digest(
            {
                "kind": kind.value,
                "reason": request.reason,
                "decided_by": request.decided_by,
                "appeal_reference": request.appeal_reference,
            }
        )
        now = self._clock()
        found = await self._store.get_action(request.action_id)
        if found is None or not self._may_see(caller, found):
            raise NotFound("enforcement_action", request.action_id)

        def decide(current: EnforcementAction) -> Ended | None:
            if current.lift_idempotency_key == request.idempotency_key:
                if current.lift_request_hash != digest:
                    raise IdempotencyConflict(
                        "enforcement_action", request.action_id, "this idempotency key was used with another request"
                    )
                return None
            if current.state is not EnforcementActionState.ACTIVE:
                raise FailedPrecondition(
                    f"enforcement action {current.action_id!r} is {current.state.value}, not active"
                )
            lifted = kind is LiftKind.LIFT
            ended = replace(
                current,
                state=EnforcementActionState.LIFTED if lifted else EnforcementActionState.REVERSED,
                end_time=now,
                ended_by=request.decided_by,
                end_reason=request.reason,
                appeal_reference=request.appeal_reference,
                lift_idempotency_key=request.idempotency_key,
                lift_request_hash=digest,
            )
            event = EnforcementEvent.LIFT if lifted else EnforcementEvent.REVERSE
            audit = LedgerEntry(
                action=f"enforcement.{event.value}",
                subject_type="enforcement_action",
                subject_id=current.action_id,
                actor=caller,
                legal_basis=legal.ART_14,
                reason=request.reason,
                tenant_id=current.user.tenant_id,
                data={
                    "user_id": current.user.user_id,
                    "type": current.type.value,
                    "decided_by": request.decided_by,
                    "appeal_reference": request.appeal_reference,
                },
                idempotency_key=f"enforcement.{event.value}:{current.action_id}",
                occurred_at=now,
            )
            return Ended(ended, audit, event)

        result = await self._store.end_action(request.action_id, decide, caller, now)
        if result is None:
            raise NotFound("enforcement_action", request.action_id)
        action, account = result
        return action, self._as_of(account, now)

    async def get_action(self, caller: Principal, action_id: str) -> EnforcementAction:
        caller.require_role(Role.PROVIDER, Role.OPERATOR)
        if not action_id:
            raise InvalidArgument(FieldViolation("action_id", "must be set"))
        action = await self._store.get_action(action_id)
        if action is None or not self._may_see(caller, action):
            raise NotFound("enforcement_action", action_id)
        return action

    async def list_actions(
        self,
        caller: Principal,
        user: UserRef | None,
        action_filter: ActionFilter,
        *,
        page_size: int,
        page_token: str,
    ) -> tuple[builtins.list[EnforcementAction], str]:
        check = FieldChecker()
        ref = request_user(caller, user, check)
        check_page_size(check, page_size)
        if action_filter.created_from is not None and action_filter.created_before is not None:
            check.require(
                action_filter.created_before > action_filter.created_from,
                "create_time_range",
                "end must be after start",
            )
        check.raise_if_any()
        after = decode_page_token(page_token) if page_token else None
        limit = page_limit(page_size)
        found = await self._store.list_actions(ref, action_filter, after=after, limit=limit + 1)
        page = found[:limit]
        next_token = encode_page_token(page[-1].create_time, page[-1].action_id) if len(found) > limit else ""
        return page, next_token

    async def expire_due(self, limit: int = 100) -> builtins.list[EnforcementAction]:
        """One batch of the expiry job: actions past their until_time become EXPIRED."""
        return await self._store.expire_due(self._clock(), limit, expiry_audit, expiry_origin)

    async def start_due(self, limit: int = 100) -> int:
        """One batch of the job's other half: actions issued for later that have now started
        set their accounts' stored status (the gate honours them from their start either way)."""
        now = self._clock()
        return await self._store.start_due(now, limit, lambda u, b, a: status_audit(u, b, a, now))

    # ----------------------------------------------------------------------- the policy

    async def get_policy(self, caller: Principal, tenant_id: str) -> EligibilityPolicy:
        return await self._store.policy(request_tenant(caller, tenant_id, "tenant_id"))

    async def update_policy(self, caller: Principal, update: PolicyUpdate) -> EligibilityPolicy:
        tenant = request_tenant(caller, update.tenant_id, "policy.tenant_id")
        check = FieldChecker()
        paths = update.paths or POLICY_FIELDS
        for i, path in enumerate(update.paths):
            check.require(path in POLICY_FIELDS, f"update_mask.paths[{i}]", "not a writable field")
        if "default_required_level" in paths:
            check.require(update.default_required_level is not None, "policy.default_required_level", "must be set")
        if "function_requirements" in paths:
            seen = set()
            for i, (function, level) in enumerate(update.function_requirements):
                at = f"policy.function_requirements[{i}]"
                check.require(function is not None, f"{at}.function", "must be a known function")
                check.require(level is not None, f"{at}.required_level", "must be set")
                check.require(function not in seen, f"{at}.function", "listed twice")
                seen.add(function)
        if "minor_rules" in paths:
            for i, rule in enumerate(update.minor_rules):
                at = f"policy.minor_rules[{i}]"
                check.require(1 <= rule.under_age_years <= 18, f"{at}.under_age_years", "must be 1 to 18")
                for j, f in enumerate(rule.denied_functions):
                    check.require(f is not None, f"{at}.denied_functions[{j}]", "must be a known function")
                for j, f in enumerate(rule.night_denied_functions):
                    check.require(f is not None, f"{at}.night_denied_functions[{j}]", "must be a known function")
        if "night_window" in paths:
            window = update.night_window
            if window is None:
                check.add("policy.night_window", "must be set")
            else:
                for name, minute in (("start_minute", window.start_minute), ("end_minute", window.end_minute)):
                    check.require(0 <= minute < MINUTES_PER_DAY, f"policy.night_window.{name}", "must be 0 to 1439")
                check.require(
                    window.start_minute != window.end_minute, "policy.night_window", "start and end must differ"
                )
        if "time_zone" in paths:
            try:
                ZoneInfo(update.time_zone)
            except (ZoneInfoNotFoundError, ValueError):
                check.add("policy.time_zone", "must be an IANA time zone, for example Asia/Shanghai")
        check.raise_if_any()
        now = self._clock()

        def decide(current: EligibilityPolicy) -> tuple[EligibilityPolicy, LedgerEntry]:
            if update.etag and update.etag != current.etag:
                raise FailedPrecondition("the policy changed since it was read (etag mismatch); read it again")
            changes: dict[str, Any] = {}
            if "default_required_level" in paths:
                changes["default_required_level"] = update.default_required_level
            if "function_requirements" in paths:
                changes["function_requirements"] = update.function_requirements
            if "one_identity_per_account" in paths:
                changes["one_identity_per_account"] = update.one_identity_per_account
            if "minor_rules" in paths:
                changes["minor_rules"] = update.minor_rules
            if "night_window" in paths:
                changes["night_window"] = update.night_window
            if "time_zone" in paths:
                changes["time_zone"] = update.time_zone
            new = replace(current, **changes, tenant_id=tenant, revision=current.revision + 1, update_time=now)
            audit = LedgerEntry(
                action="eligibility_policy.update",
                subject_type="eligibility_policy",
                subject_id=tenant,
                actor=caller,
                legal_basis=legal.ART_7_8,
                tenant_id=tenant,
                data={"paths": sorted(paths), "etag": new.etag},
                idempotency_key=f"eligibility_policy.update:{tenant}:{new.revision}",
                occurred_at=now,
            )
            return new, audit

        try:
            return await self._store.update_policy(tenant, decide)
        except PolicyChangedConcurrently as exc:
            raise FailedPrecondition("the policy changed since it was read (etag mismatch); read it again") from exc
