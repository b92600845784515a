"""Tables of the shared `ledger` schema.

queue     what services append, inside their own transactions (insert-only
          for them; the sequencer consumes a row only once it is integrated)
entries   sequenced entries: leaf index, the exact canonical bytes
nodes     every perfect subtree hash, level 0 (leaf hashes) upward; never pruned
heads     signed tree heads (C2SP checkpoints), one per integrated batch
signing_keys  tree-head keys with the time each became valid
archives  signed exports of pruned left-edge ranges
policy    the retention period (latest row wins; never under six months)

Roles and the triggers that keep all of this append-only are created by the
migration; see avgate/ledger/migrations.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Integer,
    Interval,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    Uuid,
    func,
)

SCHEMA = "ledger"

metadata = MetaData(schema=SCHEMA)

queue = Table(
    "queue",
    metadata,
    Column("queue_id", BigInteger, Identity(always=False), primary_key=True),
    Column("entry_id", Uuid, nullable=False),
    Column("idempotency_key", Text, nullable=False, unique=True),
    Column("payload", LargeBinary, nullable=False),
    Column("queued_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("writer", Text, nullable=False, server_default=func.current_user()),
)

entries = Table(
    "entries",
    metadata,
    Column("leaf_index", BigInteger, primary_key=True, autoincrement=False),
    Column("entry_id", Uuid, nullable=False, unique=True),
    Column("idempotency_key", Text, nullable=False, unique=True),
    Column("payload", LargeBinary, nullable=False),
    Column("writer", Text, nullable=False),
    Column("queued_at", DateTime(timezone=True), nullable=False),
    Column("integrated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

nodes = Table(
    "nodes",
    metadata,
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary, nullable=False),
    CheckConstraint("octet_length(hash) = 32", name="nodes_hash_is_sha256"),
)

heads = Table(
    "heads",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary, nullable=False),
    Column("checkpoint", LargeBinary, nullable=False),
    Column("key_name", Text, nullable=False),
    Column("signed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("key_id", Integer, Identity(always=False), primary_key=True),
    Column("vkey", Text, nullable=False, unique=True),
    Column("valid_from", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

archives = Table(
    "archives",
    metadata,
    Column("archive_id", Integer, Identity(always=False), primary_key=True),
    Column("first_index", BigInteger, nullable=False),
    Column("last_index", BigInteger, nullable=False),
    Column("sha256", LargeBinary, nullable=False),
    Column("covered_tree_size", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

policy = Table(
    "policy",
    metadata,
    Column("policy_id", Integer, Identity(always=False), primary_key=True),
    Column("retention", Interval, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("retention >= interval '6 months'", name="policy_retention_at_least_six_months"),
)
