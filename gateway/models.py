"""Tables of the gateway schema."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

SCHEMA = "gateway"

metadata = MetaData(schema=SCHEMA)

RATE_LIMIT_SHAPE = "({rps} is null) = ({burst} is null) and ({rps} is null or ({rps} > 0 and {burst} >= 1))"
"""Both halves of a rate limit are set or neither, and a set one admits something."""

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
    # An operator's limit on the key; both null: the gateway's default applies.
    Column("rate_limit_rps", Double),
    Column("rate_limit_burst", Integer),
    CheckConstraint(
        RATE_LIMIT_SHAPE.format(rps="rate_limit_rps", burst="rate_limit_burst"), name="api_keys_rate_limit"
    ),
    # SHA-256 of the client certificate (DER, hex) the key is bound to; NULL: unbound.
    Column("client_certificate_sha256", String(64)),
    CheckConstraint("role in ('provider', 'regulator', 'public', 'operator')", name="api_keys_role_known"),
    CheckConstraint("(role = 'provider') = (tenant_id is not null)", name="api_keys_tenant_iff_provider"),
    CheckConstraint("client_certificate_sha256 ~ '^[0-9a-f]{64}$'", name="api_keys_certificate_sha256_hex"),
    Index("api_keys_tenant_created", "tenant_id", "create_time", "key_id"),
)

tenant_rate_limits = Table(
    "tenant_rate_limits",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("requests_per_second", Double, nullable=False),
    Column("burst", Integer, nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False),
    Column("updated_by", Text, nullable=False),
    CheckConstraint("requests_per_second > 0 and burst >= 1", name="tenant_rate_limits_positive"),
)
"""Operators' limits on all of a tenant's keys together; no row: the gateway's default applies."""
