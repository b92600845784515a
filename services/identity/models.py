"""Tables of the identity schema: the outbox of incidents handed to reporting
(avgate.kernel.reporting_handoff), one-time codes and abuse limits; its issue
adds the rest with migrations."""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
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
from sqlalchemy.dialects.postgresql import ARRAY

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
