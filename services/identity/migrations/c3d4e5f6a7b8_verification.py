"""Verification flows, consents, erasures, the per-record data keys and the
identity claims of "one identity per account" (PIPL, Art. 8).

Personal data is stored only as vault ciphertexts; the uniquely indexed
identity_claims key holds a blind-index digest, never a clear value, so a
unique violation's DETAIL shows nothing personal. The identity role owns the
schema: no grants needed.

Revision ID: c3d4e5f6a7b8
Revises: b2c3d4e5f6a7
Create Date: 2026-12-12
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "c3d4e5f6a7b8"
down_revision: str | Sequence[str] | None = "b2c3d4e5f6a7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "identity"


def _account_fkey(name: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id", "user_id"], ["identity.accounts.tenant_id", "identity.accounts.user_id"], name=name
    )


def upgrade() -> None:
    op.create_table(
        "personal_data_keys",
        sa.Column("record_id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("kek_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        schema=S,
    )
    op.create_index("personal_data_keys_user", "personal_data_keys", ["tenant_id", "user_id"], schema=S)

    op.create_table(
        "verification_flows",
        sa.Column("flow_id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("request_digest", sa.LargeBinary(32), nullable=False),
        sa.Column("subject_type", sa.String(16), nullable=False),
        sa.Column("id_kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("level_reached", sa.String(32), nullable=False),
        sa.Column("methods", postgresql.ARRAY(sa.String(32)), nullable=False),
        sa.Column("name_ct", sa.LargeBinary()),
        sa.Column("id_number_ct", sa.LargeBinary()),
        sa.Column("mobile_ct", sa.LargeBinary()),
        sa.Column("index_version", sa.String(64)),
        sa.Column("id_index", sa.LargeBinary(32)),
        sa.Column("phone_index", sa.LargeBinary(32)),
        sa.Column("guardian_consent_required", sa.Boolean(), nullable=False),
        sa.Column("guardian_consent_id", sa.String(40)),
        sa.Column("minor_until", sa.Date()),
        sa.Column("failure_reason", sa.String(32)),
        sa.Column("complete_idempotency_key", sa.String(128)),
        sa.Column("verifier_reference", sa.Text()),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finish_time", sa.DateTime(timezone=True)),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        _account_fkey("verification_flows_account_fkey"),
        sa.CheckConstraint(
            "state in ('awaiting_code', 'code_confirmed', 'awaiting_guardian_consent', 'completed', 'failed',"
            " 'expired')",
            name="verification_flows_state_known",
        ),
        schema=S,
    )
    op.create_index(
        "verification_flows_tenant_idempotency_key",
        "verification_flows",
        ["tenant_id", "idempotency_key"],
        unique=True,
        schema=S,
    )
    op.create_index("verification_flows_user", "verification_flows", ["tenant_id", "user_id", "create_time"], schema=S)

    op.create_table(
        "identity_claims",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("flow_id", sa.String(40), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "kind", "version", "digest", name="identity_claims_pkey"),
        schema=S,
    )
    op.create_index("identity_claims_user", "identity_claims", ["tenant_id", "user_id"], schema=S)

    op.create_table(
        "consents",
        sa.Column("consent_id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("purpose", sa.String(48), nullable=False),
        sa.Column("text_version", sa.String(64), nullable=False),
        sa.Column("consent_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("withdraw_time", sa.DateTime(timezone=True)),
        sa.Column("withdraw_idempotency_key", sa.String(128)),
        sa.Column("erasure_id", sa.String(40)),
        sa.Column("flow_id", sa.String(40)),
        sa.Column("relationship", sa.String(32)),
        sa.Column("guardian_name_ct", sa.LargeBinary()),
        sa.Column("guardian_id_number_ct", sa.LargeBinary()),
        sa.Column("guardian_mobile_ct", sa.LargeBinary()),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ledger_entry_id", sa.Uuid(), nullable=False),
        _account_fkey("consents_account_fkey"),
        sa.CheckConstraint(
            "purpose in ('sensitive_personal_information', 'service_agreement', 'guardian')",
            name="consents_purpose_known",
        ),
        schema=S,
    )
    op.create_index(
        "consents_tenant_idempotency_key", "consents", ["tenant_id", "idempotency_key"], unique=True, schema=S
    )
    op.create_index("consents_user", "consents", ["tenant_id", "user_id", "create_time", "consent_id"], schema=S)

    op.create_table(
        "erasures",
        sa.Column("erasure_id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("cause", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("erase_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ledger_entry_id", sa.Uuid(), nullable=False),
        sa.CheckConstraint("cause in ('request', 'consent_withdrawn')", name="erasures_cause_known"),
        schema=S,
    )
    op.create_index(
        "erasures_tenant_idempotency_key", "erasures", ["tenant_id", "idempotency_key"], unique=True, schema=S
    )


def downgrade() -> None:
    op.drop_table("erasures", schema=S)
    op.drop_table("consents", schema=S)
    op.drop_table("identity_claims", schema=S)
    op.drop_table("verification_flows", schema=S)
    op.drop_table("personal_data_keys", schema=S)
