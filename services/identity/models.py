"""Tables of the identity schema: the outbox of incidents handed to reporting
(avgate.kernel.reporting_handoff), one-time codes and abuse limits, accounts,
enforcement actions and tenants' eligibility policies. The verification flows and
the personal-data vault add theirs with their own migrations."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from avgate.kernel.outbox import outbox_table

SCHEMA = "identity"

metadata = MetaData(schema=SCHEMA)

outbox = outbox_table(metadata)

# --- codes and limits

# One-time codes (services.identity.codes): only a keyed hash of the code is kept, bound to
# the flow and the phone's blind index; at most one active code per flow.
verification_codes = Table(
    "verification_codes",
    metadata,
    Column("code_id", Uuid, primary_key=True),
    Column("flow_id", Text, nullable=False),
    Column("phone_index", LargeBinary, nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("code_hash", LargeBinary(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False),
    Column("state", String(16), nullable=False, server_default=text("'active'")),
    Column("finished_at", DateTime(timezone=True)),
    CheckConstraint(
        "state in ('active', 'used', 'exhausted', 'expired', 'superseded')", name="verification_codes_state_check"
    ),
    CheckConstraint("attempts >= 0 and attempts <= max_attempts", name="verification_codes_attempts_check"),
    Index(
        "verification_codes_one_active_per_flow",
        "flow_id",
        unique=True,
        postgresql_where=text("state = 'active'"),
    ),
    Index("verification_codes_expires_at_idx", "expires_at"),
)

# Sliding-window send limits (services.identity.limits): one row per limited subject (a phone's
# blind index, a client address's keyed hash), holding the send times inside the longest window.
send_limits = Table(
    "send_limits",
    metadata,
    Column("scope", String(16), nullable=False),
    Column("subject", LargeBinary, nullable=False),
    Column("recent", ARRAY(DateTime(timezone=True)), nullable=False, server_default=text("'{}'")),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("scope", "subject", name="send_limits_pkey"),
    CheckConstraint("scope in ('phone', 'address')", name="send_limits_scope_check"),
    Index("send_limits_updated_at_idx", "updated_at"),
)

# Failed code confirmations and lockouts (services.identity.limits): per (account, client
# address) and, under the empty address key, per account.
verification_failures = Table(
    "verification_failures",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("user_id", Text, nullable=False),
    Column("address_key", LargeBinary, nullable=False),
    Column("failed_attempts", Integer, nullable=False, server_default=text("0")),
    Column("level", Integer, nullable=False, server_default=text("0")),
    Column("locked_until", DateTime(timezone=True)),
    Column("last_failure_at", DateTime(timezone=True)),
    Column("last_success_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("tenant_id", "user_id", "address_key", name="verification_failures_pkey"),
    CheckConstraint("failed_attempts >= 0 and level >= 0", name="verification_failures_counts_check"),
)


# --- accounts and enforcement

# One row per (tenant, provider user id). No personal data: the level and methods reached, the
# status the enforcement ladder leaves, the lockout counters the verification limits keep, and for
# an individual verified as under 18 only the day they turn 18 (no birth date, no ID number).
accounts = Table(
    "accounts",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("user_id", String(256), primary_key=True),
    Column("subject_type", String(16)),
    Column("verification_level", String(32), nullable=False, server_default=text("'none'")),
    Column("verification_methods", ARRAY(String(32)), nullable=False, server_default=text("'{}'")),
    Column("verify_time", DateTime(timezone=True)),
    # Recomputed from the actions in force by every issue, lift and expiry (and set by erasure).
    Column("status", String(16), nullable=False, server_default=text("'active'")),
    Column("minor_until", Date),
    Column("guardian_consent_recorded", Boolean, nullable=False, server_default=text("false")),
    Column("sensitive_consent_in_force", Boolean, nullable=False, server_default=text("false")),
    # Verification lockout: written by the verification limits, cleared by UnlockAccount.
    Column("lockout_until", DateTime(timezone=True)),
    Column("lockout_level", Integer, nullable=False, server_default=text("0")),
    Column("failed_attempts", Integer, nullable=False, server_default=text("0")),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False),
    CheckConstraint(
        "verification_level in ('none', 'format_checked', 'phone_verified', 'authoritatively_verified')",
        name="accounts_verification_level_known",
    ),
    CheckConstraint(
        "status in ('active', 'restricted', 'suspended', 'closed', 'erased')", name="accounts_status_known"
    ),
    CheckConstraint(
        "subject_type is null or subject_type in ('individual', 'organization')", name="accounts_subject_type_known"
    ),
    CheckConstraint("lockout_level >= 0 and failed_attempts >= 0", name="accounts_lockout_counts"),
)

enforcement_actions = Table(
    "enforcement_actions",
    metadata,
    Column("action_id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    # SHA-256 of the canonical request: the same key with another request is a conflict.
    Column("request_hash", LargeBinary(32), nullable=False),
    Column("type", String(32), nullable=False),
    Column("restricted_functions", ARRAY(String(32)), nullable=False),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("until_time", DateTime(timezone=True)),
    Column("reason", Text, nullable=False),
    Column("legal_basis", JSONB, nullable=False),
    Column("evidence_incident_ids", ARRAY(Text), nullable=False),
    Column("decided_by", Text, nullable=False),
    Column("automated", Boolean, nullable=False),
    Column("state", String(16), nullable=False),
    Column("end_time", DateTime(timezone=True)),
    Column("ended_by", Text, nullable=False, server_default=""),
    Column("end_reason", Text, nullable=False, server_default=""),
    Column("appeal_reference", Text, nullable=False, server_default=""),
    Column("lift_idempotency_key", String(128)),
    Column("lift_request_hash", LargeBinary(32)),
    Column("issued_by_subject", Text, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("ledger_entry_id", Uuid, nullable=False),
    ForeignKeyConstraint(
        ["tenant_id", "user_id"],
        ["identity.accounts.tenant_id", "identity.accounts.user_id"],
        name="enforcement_actions_account_fkey",
    ),
    CheckConstraint(
        "type in ('warning', 'function_restriction', 'suspension_of_updating', 'account_closure')",
        name="enforcement_actions_type_known",
    ),
    CheckConstraint("state in ('active', 'expired', 'lifted', 'reversed')", name="enforcement_actions_state_known"),
    CheckConstraint("until_time is null or until_time > start_time", name="enforcement_actions_until_after_start"),
    CheckConstraint("(state = 'active') = (end_time is null)", name="enforcement_actions_ended_when_not_active"),
    # Idempotency is per tenant: each provider chooses its own keys.
    Index("enforcement_actions_tenant_idempotency_key", "tenant_id", "idempotency_key", unique=True),
    # A user's history, newest first.
    Index("enforcement_actions_user_create_time", "tenant_id", "user_id", "create_time", "action_id"),
    # The gate reads a user's active actions; the expiry job finds the active ones past their end.
    Index(
        "enforcement_actions_user_active",
        "tenant_id",
        "user_id",
        postgresql_where=text("state = 'active'"),
    ),
    Index(
        "enforcement_actions_active_until",
        "until_time",
        postgresql_where=text("state = 'active' and until_time is not null"),
    ),
)

# A tenant's eligibility policy; no row means the defaults (services.identity.domain.EligibilityPolicy).
eligibility_policies = Table(
    "eligibility_policies",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("default_required_level", String(32), nullable=False),
    # [[function, level], ...]
    Column("function_requirements", JSONB, nullable=False),
    Column("one_identity_per_account", Boolean, nullable=False),
    # [{"under_age_years": n, "denied_functions": [...], "night_denied_functions": [...]}, ...]
    Column("minor_rules", JSONB, nullable=False),
    Column("night_start_minute", Integer, nullable=False),
    Column("night_end_minute", Integer, nullable=False),
    Column("time_zone", Text, nullable=False),
    # The etag: bumped by every update.
    Column("revision", Integer, nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False),
    CheckConstraint(
        "night_start_minute between 0 and 1439 and night_end_minute between 0 and 1439",
        name="eligibility_policies_night_minutes",
    ),
    CheckConstraint("revision > 0", name="eligibility_policies_revision_positive"),
)


# --- verification flows, consents, personal data
# Personal data lives only in `*_ct` columns, sealed with the record's data key
# (services.identity.vault); lookups use blind-index digests. Masked renderings are
# computed on read from the decrypted values, never stored. Erasure deletes the
# record's wrapped key and clears the ciphertexts and digests.

# One wrapped data key per record (a flow's subject, a guardian); deleting the row
# is the crypto-shredding step of erasure.
personal_data_keys = Table(
    "personal_data_keys",
    metadata,
    Column("record_id", String(64), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("kek_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Index("personal_data_keys_user", "tenant_id", "user_id"),
)

verification_flows = Table(
    "verification_flows",
    metadata,
    Column("flow_id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    # Keyed (blind-index) digest of the request: the same key with another identity is a conflict.
    Column("request_digest", LargeBinary(32), nullable=False),
    Column("subject_type", String(16), nullable=False),
    Column("id_kind", String(32), nullable=False),
    Column("state", String(32), nullable=False),
    Column("level_reached", String(32), nullable=False),
    Column("methods", ARRAY(String(32)), nullable=False),
    Column("name_ct", LargeBinary),
    Column("id_number_ct", LargeBinary),
    Column("mobile_ct", LargeBinary),
    Column("index_version", String(64)),
    Column("id_index", LargeBinary(32)),
    Column("phone_index", LargeBinary(32)),
    Column("guardian_consent_required", Boolean, nullable=False),
    Column("guardian_consent_id", String(40)),
    # The day an individual under 18 turns 18 (no birth date kept in clear).
    Column("minor_until", Date),
    Column("failure_reason", String(32)),
    Column("complete_idempotency_key", String(128)),
    Column("verifier_reference", Text),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("expire_time", DateTime(timezone=True), nullable=False),
    Column("finish_time", DateTime(timezone=True)),
    Column("update_time", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(
        ["tenant_id", "user_id"],
        ["identity.accounts.tenant_id", "identity.accounts.user_id"],
        name="verification_flows_account_fkey",
    ),
    CheckConstraint(
        "state in ('awaiting_code', 'code_confirmed', 'awaiting_guardian_consent', 'completed', 'failed', 'expired')",
        name="verification_flows_state_known",
    ),
    Index("verification_flows_tenant_idempotency_key", "tenant_id", "idempotency_key", unique=True),
    Index("verification_flows_user", "tenant_id", "user_id", "create_time"),
)

# "One identity backs at most one account" (tenant policy): only the blind-index digest
# is uniquely indexed, so a unique violation's DETAIL names a digest, never a clear value.
identity_claims = Table(
    "identity_claims",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("version", String(64), nullable=False),
    Column("digest", LargeBinary(32), nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("flow_id", String(40), nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "kind", "version", "digest", name="identity_claims_pkey"),
    Index("identity_claims_user", "tenant_id", "user_id"),
)

consents = Table(
    "consents",
    metadata,
    Column("consent_id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("request_hash", LargeBinary(32), nullable=False),
    Column("purpose", String(48), nullable=False),
    Column("text_version", String(64), nullable=False),
    Column("consent_time", DateTime(timezone=True), nullable=False),
    Column("withdraw_time", DateTime(timezone=True)),
    Column("withdraw_idempotency_key", String(128)),
    Column("erasure_id", String(40)),
    # Guardian consents: the guardian's data sealed with its own record key (record id = consent id).
    Column("flow_id", String(40)),
    Column("relationship", String(32)),
    Column("guardian_name_ct", LargeBinary),
    Column("guardian_id_number_ct", LargeBinary),
    Column("guardian_mobile_ct", LargeBinary),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("ledger_entry_id", Uuid, nullable=False),
    ForeignKeyConstraint(
        ["tenant_id", "user_id"],
        ["identity.accounts.tenant_id", "identity.accounts.user_id"],
        name="consents_account_fkey",
    ),
    CheckConstraint(
        "purpose in ('sensitive_personal_information', 'service_agreement', 'guardian')", name="consents_purpose_known"
    ),
    Index("consents_tenant_idempotency_key", "tenant_id", "idempotency_key", unique=True),
    Index("consents_user", "tenant_id", "user_id", "create_time", "consent_id"),
)

erasures = Table(
    "erasures",
    metadata,
    Column("erasure_id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("cause", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("erase_time", DateTime(timezone=True), nullable=False),
    Column("ledger_entry_id", Uuid, nullable=False),
    CheckConstraint("cause in ('request', 'consent_withdrawn')", name="erasures_cause_known"),
    Index("erasures_tenant_idempotency_key", "tenant_id", "idempotency_key", unique=True),
)
