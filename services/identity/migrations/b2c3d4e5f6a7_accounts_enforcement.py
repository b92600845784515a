"""Accounts, enforcement actions and eligibility policies (Art. 7, 8, 14).

The identity role owns the schema, so its own tables need no grants (as for
the outbox in c41f7e2a9d06). No column holds personal data: the verification
step adds its encrypted columns with its own migration.

Revision ID: b2c3d4e5f6a7
Revises: a1b2c3d4e5f6
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "b2c3d4e5f6a7"
down_revision: str | Sequence[str] | None = "a1b2c3d4e5f6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(256), primary_key=True),
        sa.Column("subject_type", sa.String(16)),
        sa.Column("verification_level", sa.String(32), nullable=False, server_default=sa.text("'none'")),
        sa.Column(
            "verification_methods", postgresql.ARRAY(sa.String(32)), nullable=False, server_default=sa.text("'{}'")
        ),
        sa.Column("verify_time", sa.DateTime(timezone=True)),
        sa.Column("status", sa.String(16), nullable=False, server_default=sa.text("'active'")),
        sa.Column("minor_until", sa.Date()),
        sa.Column("guardian_consent_recorded", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("sensitive_consent_in_force", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("lockout_until", sa.DateTime(timezone=True)),
        sa.Column("lockout_level", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("failed_attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "verification_level in ('none', 'format_checked', 'phone_verified', 'authoritatively_verified')",
            name="accounts_verification_level_known",
        ),
        sa.CheckConstraint(
            "status in ('active', 'restricted', 'suspended', 'closed', 'erased')", name="accounts_status_known"
        ),
        sa.CheckConstraint(
            "subject_type is null or subject_type in ('individual', 'organization')",
            name="accounts_subject_type_known",
        ),
        sa.CheckConstraint("lockout_level >= 0 and failed_attempts >= 0", name="accounts_lockout_counts"),
        schema="identity",
    )

    op.create_table(
        "enforcement_actions",
        sa.Column("action_id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("restricted_functions", postgresql.ARRAY(sa.String(32)), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until_time", sa.DateTime(timezone=True)),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("legal_basis", postgresql.JSONB(), nullable=False),
        sa.Column("evidence_incident_ids", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("decided_by", sa.Text(), nullable=False),
        sa.Column("automated", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True)),
        sa.Column("ended_by", sa.Text(), nullable=False, server_default=""),
        sa.Column("end_reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("appeal_reference", sa.Text(), nullable=False, server_default=""),
        sa.Column("lift_idempotency_key", sa.String(128)),
        sa.Column("lift_request_hash", sa.LargeBinary(32)),
        sa.Column("issued_by_subject", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ledger_entry_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "user_id"],
            ["identity.accounts.tenant_id", "identity.accounts.user_id"],
            name="enforcement_actions_account_fkey",
        ),
        sa.CheckConstraint(
            "type in ('warning', 'function_restriction', 'suspension_of_updating', 'account_closure')",
            name="enforcement_actions_type_known",
        ),
        sa.CheckConstraint(
            "state in ('active', 'expired', 'lifted', 'reversed')", name="enforcement_actions_state_known"
        ),
        sa.CheckConstraint(
            "until_time is null or until_time > start_time", name="enforcement_actions_until_after_start"
        ),
        sa.CheckConstraint("(state = 'active') = (end_time is null)", name="enforcement_actions_ended_when_not_active"),
        schema="identity",
    )
    op.create_index(
        "enforcement_actions_tenant_idempotency_key",
        "enforcement_actions",
        ["tenant_id", "idempotency_key"],
        unique=True,
        schema="identity",
    )
    op.create_index(
        "enforcement_actions_user_create_time",
        "enforcement_actions",
        ["tenant_id", "user_id", "create_time", "action_id"],
        schema="identity",
    )
    op.create_index(
        "enforcement_actions_user_active",
        "enforcement_actions",
        ["tenant_id", "user_id"],
        schema="identity",
        postgresql_where=sa.text("state = 'active'"),
    )
    op.create_index(
        "enforcement_actions_active_until",
        "enforcement_actions",
        ["until_time"],
        schema="identity",
        postgresql_where=sa.text("state = 'active' and until_time is not null"),
    )

    op.create_table(
        "eligibility_policies",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("default_required_level", sa.String(32), nullable=False),
        sa.Column("function_requirements", postgresql.JSONB(), nullable=False),
        sa.Column("one_identity_per_account", sa.Boolean(), nullable=False),
        sa.Column("minor_rules", postgresql.JSONB(), nullable=False),
        sa.Column("night_start_minute", sa.Integer(), nullable=False),
        sa.Column("night_end_minute", sa.Integer(), nullable=False),
        sa.Column("time_zone", sa.Text(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "night_start_minute between 0 and 1439 and night_end_minute between 0 and 1439",
            name="eligibility_policies_night_minutes",
        ),
        sa.CheckConstraint("revision > 0", name="eligibility_policies_revision_positive"),
        schema="identity",
    )


def downgrade() -> None:
    op.drop_table("eligibility_policies", schema="identity")
    op.drop_table("enforcement_actions", schema="identity")
    op.drop_table("accounts", schema="identity")
