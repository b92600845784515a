"""Tables of the gateway schema."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

SCHEMA = "gateway"

metadata = MetaData(schema=SCHEMA)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("display_name", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("tenant_id", String(64)),
    Column("regulator_departments", ARRAY(String(32))),
    Column("regulator_regions", ARRAY(String(6))),
    Column("secret_hash", LargeBinary(32), nullable=False),
    Column("previous_secret_hash", LargeBinary(32)),
    Column("previous_secret_expire_time", DateTime(timezone=True)),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("created_by", Text, nullable=False),
    Column("expire_time", DateTime(timezone=True)),
    Column("revoke_time", DateTime(timezone=True)),
    Column("revoke_reason", Text),
    Column("last_used_time", DateTime(timezone=True)),
    Column("development", Boolean, nullable=False, server_default="false"),
    # SHA-256 of the client certificate (DER, hex) the key is bound to; NULL: unbound.
    Column("client_certificate_sha256", String(64)),
    CheckConstraint("role in ('provider', 'regulator', 'public', 'operator')", name="api_keys_role_known"),
    CheckConstraint("(role = 'provider') = (tenant_id is not null)", name="api_keys_tenant_iff_provider"),
    CheckConstraint("client_certificate_sha256 ~ '^[0-9a-f]{64}$'", name="api_keys_certificate_sha256_hex"),
    Index("api_keys_tenant_created", "tenant_id", "create_time", "key_id"),
)
