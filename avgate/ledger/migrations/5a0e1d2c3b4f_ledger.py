"""The audit ledger: tables, roles' privileges and the append-only guards.

Privileges: service roles may only insert into the queue; only the
sequencer writes entries, nodes, heads and keys (insert-only) and consumes
queue rows it has integrated; only the pruner deletes entries, and only
archived left-edge ranges older than the retention period. Triggers repeat
every rule and are ENABLE ALWAYS, so they fire even under
session_replication_role = replica; UPDATE and TRUNCATE are refused for
everyone. A superuser can still disable them — which is why heads are
signed and copied outside the database, and `avgate ledger verify` exists.

Revision ID: 5a0e1d2c3b4f
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5a0e1d2c3b4f"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SERVICE_ROLES = "avgate_gateway, avgate_identity, avgate_screening, avgate_reporting, avgate_complaints"
TABLES = ("queue", "entries", "nodes", "heads", "signing_keys", "archives", "policy")


def upgrade() -> None:
    op.create_table(
        "queue",
        sa.Column("queue_id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("entry_id", sa.Uuid(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False, unique=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("writer", sa.Text(), nullable=False, server_default=sa.text("CURRENT_USER")),
        schema="ledger",
    )
    op.create_table(
        "entries",
        sa.Column("leaf_index", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("entry_id", sa.Uuid(), nullable=False, unique=True),
        sa.Column("idempotency_key", sa.Text(), nullable=False, unique=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("writer", sa.Text(), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("integrated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema="ledger",
    )
    op.create_table(
        "nodes",
        sa.Column("level", sa.SmallInteger(), primary_key=True, autoincrement=False),
        sa.Column("idx", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("octet_length(hash) = 32", name="nodes_hash_is_sha256"),
        schema="ledger",
    )
    op.create_table(
        "heads",
        sa.Column("tree_size", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("root_hash", sa.LargeBinary(), nullable=False),
        sa.Column("checkpoint", sa.LargeBinary(), nullable=False),
        sa.Column("key_name", sa.Text(), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema="ledger",
    )
    op.create_table(
        "signing_keys",
        sa.Column("key_id", sa.Integer(), sa.Identity(always=False), primary_key=True),
        sa.Column("vkey", sa.Text(), nullable=False, unique=True),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema="ledger",
    )
    op.create_table(
        "archives",
        sa.Column("archive_id", sa.Integer(), sa.Identity(always=False), primary_key=True),
        sa.Column("first_index", sa.BigInteger(), nullable=False),
        sa.Column("last_index", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.LargeBinary(), nullable=False),
        sa.Column("covered_tree_size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema="ledger",
    )
    op.create_table(
        "policy",
        sa.Column("policy_id", sa.Integer(), sa.Identity(always=False), primary_key=True),
        sa.Column("retention", sa.Interval(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("retention >= interval '6 months'", name="policy_retention_at_least_six_months"),
        schema="ledger",
    )
    op.execute("insert into ledger.policy (retention) values (interval '7 months')")

    op.execute(
        """
        create function ledger.refuse_change() returns trigger language plpgsql as $$
        begin
          raise exception 'ledger.%: % is not allowed; the ledger is append-only', tg_table_name, tg_op
            using errcode = 'insufficient_privilege';
        end $$;

        -- The sequencer consumes a queue row only once its entry (same key or same id) is integrated.
        create function ledger.guard_queue_delete() returns trigger language plpgsql as $$
        begin
          if current_user = 'avgate_ledger_sequencer'
             -- Two EXISTS, not one with OR: each probes its own unique index.
             and (exists (select 1 from ledger.entries e where e.idempotency_key = old.idempotency_key)
                  or exists (select 1 from ledger.entries e where e.entry_id = old.entry_id)) then
            return old;
          end if;
          raise exception 'ledger.queue: only the sequencer may consume an integrated entry'
            using errcode = 'insufficient_privilege';
        end $$;

        -- The pruner removes entries only from the archived left edge, past retention.
        create function ledger.guard_entry_delete() returns trigger language plpgsql as $$
        declare
          archived_to bigint;
          keep interval;
        begin
          select max(last_index) into archived_to from ledger.archives;
          select retention into keep from ledger.policy order by policy_id desc limit 1;
          if current_user = 'avgate_ledger_pruner'
             and archived_to is not null and old.leaf_index <= archived_to
             -- Both cutoffs, not greatest(keep, '6 months'): intervals compare with 30-day months,
             -- so a retention of '180 days' would otherwise undercut six calendar months.
             and old.integrated_at < least(now() - keep, now() - interval '6 months') then
            return old;
          end if;
          raise exception 'ledger.entries: entry % is not an archived entry past retention', old.leaf_index
            using errcode = 'insufficient_privilege';
        end $$;

        -- An archive continues the left edge, is covered by a signed head, and holds only old entries.
        create function ledger.guard_archive_insert() returns trigger language plpgsql as $$
        declare
          expected_first bigint;
          keep interval;
          newest timestamptz;
        begin
          select coalesce(max(last_index) + 1, 0) into expected_first from ledger.archives;
          select retention into keep from ledger.policy order by policy_id desc limit 1;
          select max(integrated_at) into newest from ledger.entries
            where leaf_index between new.first_index and new.last_index;
          if new.first_index <> expected_first or new.last_index < new.first_index then
            raise exception 'ledger.archives: an archive must start at the left edge (%)', expected_first;
          end if;
          if not exists (select 1 from ledger.heads h where h.tree_size = new.covered_tree_size
                                                     and h.tree_size > new.last_index) then
            raise exception 'ledger.archives: no signed head of size % covers the range', new.covered_tree_size;
          end if;
          if newest is null or newest >= least(now() - keep, now() - interval '6 months') then
            raise exception 'ledger.archives: the range holds entries younger than the retention period';
          end if;
          return new;
        end $$;
        """
    )
    for table in TABLES:
        op.execute(
            f"create trigger {table}_no_update before update on ledger.{table} "
            "for each row execute function ledger.refuse_change()"
        )
        op.execute(
            f"create trigger {table}_no_truncate before truncate on ledger.{table} "
            "for each statement execute function ledger.refuse_change()"
        )
    op.execute(
        "create trigger queue_delete before delete on ledger.queue "
        "for each row execute function ledger.guard_queue_delete()"
    )
    op.execute(
        "create trigger entries_delete before delete on ledger.entries "
        "for each row execute function ledger.guard_entry_delete()"
    )
    for table in ("nodes", "heads", "signing_keys", "archives", "policy"):
        op.execute(
            f"create trigger {table}_no_delete before delete on ledger.{table} "
            "for each row execute function ledger.refuse_change()"
        )
    op.execute(
        "create trigger archives_insert before insert on ledger.archives "
        "for each row execute function ledger.guard_archive_insert()"
    )
    # ENABLE ALWAYS: fire even with session_replication_role = replica.
    op.execute(
        """
        do $$
        declare t record;
        begin
          for t in select tgname, tgrelid::regclass as rel from pg_trigger
                   where tgrelid::regclass::text like 'ledger.%' and not tgisinternal loop
            execute format('alter table %s enable always trigger %I', t.rel, t.tgname);
          end loop;
        end $$;
        """
    )

    op.execute("revoke all on all tables in schema ledger from public")
    op.execute(f"grant usage on schema ledger to {SERVICE_ROLES}, avgate_ledger_sequencer, avgate_ledger_pruner")
    # Column-level: queue_id, queued_at and writer take their defaults, so a service can neither
    # pose as another writer nor pick its place in the queue.
    op.execute(f"grant insert (entry_id, idempotency_key, payload) on ledger.queue to {SERVICE_ROLES}")
    op.execute(f"grant usage on sequence ledger.queue_queue_id_seq to {SERVICE_ROLES}")
    op.execute("grant select, delete on ledger.queue to avgate_ledger_sequencer")
    op.execute(
        "grant select, insert on ledger.entries, ledger.nodes, ledger.heads, ledger.signing_keys "
        "to avgate_ledger_sequencer"
    )
    op.execute("grant usage on sequence ledger.signing_keys_key_id_seq to avgate_ledger_sequencer")
    op.execute("grant select on ledger.archives, ledger.policy to avgate_ledger_sequencer")
    op.execute(
        "grant select on ledger.entries, ledger.nodes, ledger.heads, ledger.signing_keys, ledger.archives, "
        "ledger.policy to avgate_ledger_pruner, avgate_reporting"
    )
    op.execute("grant delete on ledger.entries to avgate_ledger_pruner")
    op.execute("grant insert on ledger.archives to avgate_ledger_pruner")
    op.execute("grant usage on sequence ledger.archives_archive_id_seq to avgate_ledger_pruner")


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table, schema="ledger")
    for fn in ("refuse_change", "guard_queue_delete", "guard_entry_delete", "guard_archive_insert"):
        op.execute(f"drop function if exists ledger.{fn}()")
