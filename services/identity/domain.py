"""Identity's domain: accounts, the eligibility policy, the enforcement ladder
(Art. 14) and the publishing gate's rules (Art. 7, 8), as plain values.

No personal data lives here. An account holds its verification level and
method, its enforcement status, its lockout counters and, for an individual
verified as under 18, `minor_until`: the day the user turns 18. That one
date is all the minors rules need (the age in whole years below 18 follows
from it); the ID number itself, and so the birth date, stays encrypted with
the personal-data vault.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from avgate.kernel import legal
from avgate.kernel.legal import LegalBasis

ADULT_AGE = 18
GUARDIAN_CONSENT_AGE = 14  # PIPL Art. 31
MINUTES_PER_DAY = 24 * 60


class VerificationLevel(enum.Enum):
    NONE = "none"
    FORMAT_CHECKED = "format_checked"
    PHONE_VERIFIED = "phone_verified"
    AUTHORITATIVELY_VERIFIED = "authoritatively_verified"

    @property
    def rank(self) -> int:
        return _LEVEL_RANK[self]


_LEVEL_RANK = {level: i for i, level in enumerate(VerificationLevel)}


class SubjectType(enum.Enum):
    INDIVIDUAL = "individual"
    ORGANIZATION = "organization"


class VerificationMethod(enum.Enum):
    FORMAT_CHECK = "format_check"
    SMS_CODE = "sms_code"
    AUTHORITATIVE_SERVICE = "authoritative_service"


class AccountStatus(enum.Enum):
    ACTIVE = "active"
    RESTRICTED = "restricted"
    SUSPENDED = "suspended"
    CLOSED = "closed"
    ERASED = "erased"


class AccountFunction(enum.Enum):
    PUBLISH = "publish"
    UPLOAD = "upload"
    COMMENT = "comment"
    LIVE_STREAM = "live_stream"
    BULLET_COMMENT = "bullet_comment"
    DIRECT_MESSAGE = "direct_message"
    UPDATE_PROFILE = "update_profile"
    TIPPING = "tipping"
    REPOST = "repost"


# Suspension of updating (暂停更新) stops the account from putting anything new in front of
# other users: content, live streams, reposts, comments and bullet comments, and its public
# profile. Watching, private messages and tipping are not "updating" and stay open; a provider
# that wants those closed too issues a function restriction naming them.
UPDATING_FUNCTIONS = frozenset(
    {
        AccountFunction.PUBLISH,
        AccountFunction.UPLOAD,
        AccountFunction.LIVE_STREAM,
        AccountFunction.REPOST,
        AccountFunction.COMMENT,
        AccountFunction.BULLET_COMMENT,
        AccountFunction.UPDATE_PROFILE,
    }
)


class IneligibilityCode(enum.Enum):
    VERIFICATION_LEVEL_TOO_LOW = "verification_level_too_low"
    FUNCTION_RESTRICTED = "function_restricted"
    UPDATING_SUSPENDED = "updating_suspended"
    ACCOUNT_CLOSED = "account_closed"
    MINOR_RESTRICTED = "minor_restricted"
    MINOR_NIGHT_HOURS = "minor_night_hours"
    GUARDIAN_CONSENT_MISSING = "guardian_consent_missing"
    CONSENT_MISSING = "consent_missing"


class EnforcementActionType(enum.Enum):
    WARNING = "warning"
    FUNCTION_RESTRICTION = "function_restriction"
    SUSPENSION_OF_UPDATING = "suspension_of_updating"
    ACCOUNT_CLOSURE = "account_closure"


class EnforcementActionState(enum.Enum):
    ACTIVE = "active"
    EXPIRED = "expired"
    LIFTED = "lifted"
    REVERSED = "reversed"


class LiftKind(enum.Enum):
    LIFT = "lift"
    REVERSE = "reverse"


class EnforcementEvent(enum.Enum):
    """What happened to an action: each is one ledger entry and one incident for reporting."""

    ISSUE = "issue"
    LIFT = "lift"
    REVERSE = "reverse"
    EXPIRE = "expire"


ART_7 = legal.navis("7", note="protection of minors")
ART_8 = legal.navis("8", note="real-identity authentication before publishing")
PIPL_29 = LegalBasis(legal.PIPL, "29", note="separate consent to processing sensitive personal information")
PIPL_31 = LegalBasis(legal.PIPL, "31", note="guardian consent for a minor under 14")


@dataclass(frozen=True)
class UserRef:
    tenant_id: str
    user_id: str


@dataclass(frozen=True)
class Lockout:
    until: datetime
    level: int
    failed_attempts: int


@dataclass(frozen=True)
class EnforcementAction:
    action_id: str
    user: UserRef
    type: EnforcementActionType
    restricted_functions: tuple[AccountFunction, ...]
    start_time: datetime
    until_time: datetime | None
    reason: str
    legal_basis: tuple[LegalBasis, ...]
    evidence_incident_ids: tuple[str, ...]
    decided_by: str
    automated: bool
    state: EnforcementActionState
    create_time: datetime
    issued_by_subject: str
    idempotency_key: str
    request_hash: bytes
    end_time: datetime | None = None
    ended_by: str = ""
    end_reason: str = ""
    appeal_reference: str = ""
    lift_idempotency_key: str = ""
    lift_request_hash: bytes = b""

    def in_force(self, now: datetime) -> bool:
        """Active, started, and not past its end (the expiry job may not have run yet)."""
        return (
            self.state is EnforcementActionState.ACTIVE
            and self.start_time <= now
            and (self.until_time is None or now < self.until_time)
        )


@dataclass(frozen=True)
class Account:
    user: UserRef
    subject_type: SubjectType | None = None
    verification_level: VerificationLevel = VerificationLevel.NONE
    methods: tuple[VerificationMethod, ...] = ()
    verify_time: datetime | None = None
    status: AccountStatus = AccountStatus.ACTIVE
    minor_until: date | None = None
    """The day an individual verified as under 18 turns 18; None for adults, organisations and the unverified."""
    guardian_consent_recorded: bool = False
    sensitive_consent_in_force: bool = False
    lockout: Lockout | None = None
    active_actions: tuple[EnforcementAction, ...] = ()

    def age_years(self, today: date) -> int | None:
        """Whole years of age, when the account is a minor's (the only ages identity keeps)."""
        if self.minor_until is None or today >= self.minor_until:
            return None
        born_year = self.minor_until.year - ADULT_AGE
        before_birthday = (today.month, today.day) < (self.minor_until.month, self.minor_until.day)
        return today.year - born_year - int(before_birthday)

    def lockout_at(self, now: datetime) -> Lockout | None:
        return self.lockout if self.lockout is not None and self.lockout.until > now else None


def status_from(actions: Iterable[EnforcementAction], now: datetime, *, erased: bool = False) -> AccountStatus:
    """The account's status from its actions in force: the highest rung wins."""
    if erased:
        return AccountStatus.ERASED
    types = {a.type for a in actions if a.in_force(now)}
    if EnforcementActionType.ACCOUNT_CLOSURE in types:
        return AccountStatus.CLOSED
    if EnforcementActionType.SUSPENSION_OF_UPDATING in types:
        return AccountStatus.SUSPENDED
    if EnforcementActionType.FUNCTION_RESTRICTION in types:
        return AccountStatus.RESTRICTED
    return AccountStatus.ACTIVE


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class MinorRule:
    under_age_years: int
    denied_functions: tuple[AccountFunction, ...] = ()
    night_denied_functions: tuple[AccountFunction, ...] = ()


@dataclass(frozen=True)
class NightWindow:
    start_minute: int
    end_minute: int

    def contains(self, minute: int) -> bool:
        if self.start_minute <= self.end_minute:
            return self.start_minute <= minute < self.end_minute
        return minute >= self.start_minute or minute < self.end_minute  # wraps midnight


DEFAULT_TIME_ZONE = "Asia/Shanghai"

# Defaults: every function needs the highest level; no live-streaming host accounts for under-16s
# and no tipping for minors (the 2022 CAC/NRTA notice on minors and live streaming); no publishing,
# uploading or streaming by minors between 22:00 and 06:00 (the minors-mode night hours).
DEFAULT_MINOR_RULES = (
    MinorRule(16, denied_functions=(AccountFunction.LIVE_STREAM,)),
    MinorRule(
        18,
        denied_functions=(AccountFunction.TIPPING,),
        night_denied_functions=(AccountFunction.PUBLISH, AccountFunction.UPLOAD, AccountFunction.LIVE_STREAM),
    ),
)
DEFAULT_NIGHT_WINDOW = NightWindow(22 * 60, 6 * 60)
DEFAULT_ETAG = "0"


@dataclass(frozen=True)
class EligibilityPolicy:
    tenant_id: str
    default_required_level: VerificationLevel = VerificationLevel.AUTHORITATIVELY_VERIFIED
    function_requirements: tuple[tuple[AccountFunction, VerificationLevel], ...] = ()
    one_identity_per_account: bool = False
    minor_rules: tuple[MinorRule, ...] = DEFAULT_MINOR_RULES
    night_window: NightWindow = DEFAULT_NIGHT_WINDOW
    time_zone: str = DEFAULT_TIME_ZONE
    revision: int = 0
    update_time: datetime | None = None

    @property
    def etag(self) -> str:
        return str(self.revision)

    def required_level(self, function: AccountFunction) -> VerificationLevel:
        return next((level for f, level in self.function_requirements if f is function), self.default_required_level)


POLICY_FIELDS = (
    "default_required_level",
    "function_requirements",
    "one_identity_per_account",
    "minor_rules",
    "night_window",
    "time_zone",
)


# --------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class IneligibilityReason:
    code: IneligibilityCode
    message: str
    legal_basis: LegalBasis
    enforcement_action_id: str = ""
    until_time: datetime | None = None
    required_level: VerificationLevel | None = None


@dataclass(frozen=True)
class Eligibility:
    allowed: bool
    reasons: tuple[IneligibilityReason, ...]
    verification_level: VerificationLevel
    policy_etag: str
    evaluate_time: datetime


def _action_basis(action: EnforcementAction) -> LegalBasis:
    return action.legal_basis[0] if action.legal_basis else legal.navis("14")


def _night_end(now: datetime, window: NightWindow, zone: ZoneInfo) -> datetime:
    local = now.astimezone(zone)
    end = datetime.combine(local.date(), time(window.end_minute // 60, window.end_minute % 60), tzinfo=zone)
    if end <= local:
        end += timedelta(days=1)
    return end.astimezone(UTC)


def evaluate(
    account: Account, policy: EligibilityPolicy, function: AccountFunction, now: datetime
) -> tuple[IneligibilityReason, ...]:
    """Every reason `account` may not use `function` at `now` (empty: allowed)."""
    reasons: list[IneligibilityReason] = []
    if account.status is AccountStatus.ERASED:
        reasons.append(
            IneligibilityReason(
                IneligibilityCode.CONSENT_MISSING, "personal data was erased; the user must verify again", PIPL_29
            )
        )
    for action in account.active_actions:
        if not action.in_force(now):
            continue
        if action.type is EnforcementActionType.ACCOUNT_CLOSURE:
            reasons.append(
                IneligibilityReason(
                    IneligibilityCode.ACCOUNT_CLOSED, "the account is closed", _action_basis(action), action.action_id
                )
            )
        elif action.type is EnforcementActionType.SUSPENSION_OF_UPDATING and function in UPDATING_FUNCTIONS:
            reasons.append(
                IneligibilityReason(
                    IneligibilityCode.UPDATING_SUSPENDED,
                    "updating is suspended",
                    _action_basis(action),
                    action.action_id,
                    action.until_time,
                )
            )
        elif action.type is EnforcementActionType.FUNCTION_RESTRICTION and function in action.restricted_functions:
            reasons.append(
                IneligibilityReason(
                    IneligibilityCode.FUNCTION_RESTRICTED,
                    f"{function.value} is restricted",
                    _action_basis(action),
                    action.action_id,
                    action.until_time,
                )
            )
    required = policy.required_level(function)
    if account.verification_level.rank < required.rank:
        reasons.append(
            IneligibilityReason(
                IneligibilityCode.VERIFICATION_LEVEL_TOO_LOW,
                f"{function.value} needs verification level {required.value}",
                ART_8,
                required_level=required,
            )
        )
    zone = ZoneInfo(policy.time_zone)
    age = account.age_years(now.astimezone(zone).date())
    if age is not None:
        if age < GUARDIAN_CONSENT_AGE and not account.guardian_consent_recorded:
            reasons.append(
                IneligibilityReason(
                    IneligibilityCode.GUARDIAN_CONSENT_MISSING, "a guardian's consent is not on record", PIPL_31
                )
            )
        bands = [rule for rule in policy.minor_rules if age < rule.under_age_years]
        if any(function in rule.denied_functions for rule in bands):
            reasons.append(
                IneligibilityReason(
                    IneligibilityCode.MINOR_RESTRICTED, f"{function.value} is not allowed for the user's age", ART_7
                )
            )
        elif any(function in rule.night_denied_functions for rule in bands):
            minute = now.astimezone(zone).hour * 60 + now.astimezone(zone).minute
            if policy.night_window.contains(minute):
                reasons.append(
                    IneligibilityReason(
                        IneligibilityCode.MINOR_NIGHT_HOURS,
                        f"{function.value} is not allowed for the user's age at night",
                        ART_7,
                        until_time=_night_end(now, policy.night_window, zone),
                    )
                )
    return tuple(reasons)


# --------------------------------------------------------------------------- enforcement input


@dataclass(frozen=True)
class IssueRequest:
    idempotency_key: str
    user: UserRef | None
    type: EnforcementActionType | None
    restricted_functions: tuple[AccountFunction | None, ...]
    start_time: datetime | None
    until_time: datetime | None
    reason: str
    legal_basis: tuple[LegalBasis, ...]
    evidence_incident_ids: tuple[str, ...]
    decided_by: str
    automated: bool


@dataclass(frozen=True)
class LiftRequest:
    idempotency_key: str
    action_id: str
    kind: LiftKind | None
    reason: str
    decided_by: str
    appeal_reference: str = ""


@dataclass(frozen=True)
class ActionFilter:
    states: tuple[EnforcementActionState, ...] = ()
    types: tuple[EnforcementActionType, ...] = ()
    created_from: datetime | None = None
    created_before: datetime | None = None


@dataclass(frozen=True)
class PolicyUpdate:
    """The caller's new values and which of them to apply (`paths` ⊆ POLICY_FIELDS)."""

    tenant_id: str
    etag: str
    paths: tuple[str, ...]
    default_required_level: VerificationLevel | None = None
    function_requirements: tuple[tuple[AccountFunction | None, VerificationLevel | None], ...] = ()
    one_identity_per_account: bool = False
    minor_rules: tuple[MinorRule, ...] = ()
    night_window: NightWindow | None = None
    time_zone: str = ""


def new_action_id() -> str:
    return "enf" + uuid.uuid4().hex


def sorted_functions(functions: Sequence[AccountFunction]) -> tuple[AccountFunction, ...]:
    return tuple(sorted(set(functions), key=lambda f: f.value))
