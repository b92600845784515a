"""Where export requests and their bundles' descriptions live (the bytes are files)."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from avgate.ledger.append import append as ledger_append
from avgate.ledger.entry import LedgerEntry
from services.reporting.feed.exports import Export, ExportFile, filter_document, filter_from_document
from services.reporting.models import exports


class SqlExportStore:
    def __init__(self, engine: AsyncEngine):
        self._engine = engine

    async def create(self, export: Export, digest: bytes, audit: LedgerEntry) -> tuple[Export, bytes]:
        async with self._engine.begin() as conn:
            inserted = await conn.execute(
                insert(exports)
                .values(
                    export_id=export.export_id,
                    requested_by=export.requested_by,
                    request_id=export.request_id,
                    request_hash=digest,
                    principal=export.principal,
                    filter=filter_document(export.request),
                    state=export.state,
                    ledger_entry_id=export.ledger_entry_id,
                    create_time=export.create_time,
                )
                .on_conflict_do_nothing(constraint="exports_requested_by_request_id_key")
                .returning(exports.c.export_id)
            )
            if inserted.first() is not None:
                await ledger_append(conn, audit)
                return export, digest
            row = (
                (
                    await conn.execute(
                        select(exports).where(
                            exports.c.requested_by == export.requested_by, exports.c.request_id == export.request_id
                        )
                    )
                )
                .mappings()
                .one()
            )
        return _from_row(row), bytes(row["request_hash"])

    async def get(self, export_id: str) -> Export | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(exports).where(exports.c.export_id == export_id))).mappings().first()
        return _from_row(row) if row is not None else None

    async def lease_pending(self, lease: timedelta) -> Export | None:
        c = exports.c
        candidate = (
            select(c.export_id)
            .where(c.state == "pending", or_(c.lease_until.is_(None), c.lease_until < func.now()))
            .order_by(c.create_time)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        async with self._engine.begin() as conn:
            row = (
                (
                    await conn.execute(
                        update(exports)
                        .where(c.export_id == candidate)
                        .values(lease_until=func.now() + lease)
                        .returning(*exports.c)
                    )
                )
                .mappings()
                .first()
            )
        return _from_row(row) if row is not None else None

    async def finish(self, export: Export, audit: LedgerEntry) -> None:
        async with self._engine.begin() as conn:
            finished = await conn.execute(
                update(exports)
                .where(exports.c.export_id == export.export_id, exports.c.state == "pending")
                .values(
                    state=export.state,
                    item_count=export.item_count,
                    files=[
                        {"kind": f.kind, "name": f.name, "sha256": f.sha256, "size_bytes": f.size_bytes}
                        for f in export.files
                    ],
                    manifest_signature=export.manifest_signature or None,
                    signing_key_name=export.signing_key_name,
                    tree_size=export.tree_size or None,
                    checkpoint=export.checkpoint or None,
                    error=export.error or None,
                    complete_time=export.complete_time,
                    expire_time=export.expire_time,
                    lease_until=None,
                )
                .returning(exports.c.export_id)
            )
            if finished.first() is not None:  # not when another builder finished it first
                await ledger_append(conn, audit)

    async def release(self, export_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(exports).where(exports.c.export_id == export_id).values(lease_until=None))

    async def due_for_expiry(self, now: datetime) -> list[str]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(exports.c.export_id).where(exports.c.state == "ready", exports.c.expire_time <= now)
            )
            return [r[0] for r in rows]

    async def expire(self, export_id: str, audit: LedgerEntry) -> bool:
        async with self._engine.begin() as conn:
            expired = await conn.execute(
                update(exports)
                .where(exports.c.export_id == export_id, exports.c.state == "ready")
                .values(state="expired")
                .returning(exports.c.export_id)
            )
            if expired.first() is None:  # another builder recorded it first
                return False
            await ledger_append(conn, audit)
            return True

    async def states(self, export_ids: Collection[str]) -> dict[str, str]:
        if not export_ids:
            return {}
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(exports.c.export_id, exports.c.state).where(exports.c.export_id.in_(list(export_ids)))
            )
            return {r[0]: r[1] for r in rows}

    async def record(self, audit: LedgerEntry) -> None:
        async with self._engine.begin() as conn:
            await ledger_append(conn, audit)


def _from_row(row: Any) -> Export:
    return Export(
        export_id=row["export_id"],
        requested_by=row["requested_by"],
        request_id=row["request_id"],
        request=filter_from_document(row["filter"]),
        state=row["state"],
        ledger_entry_id=uuid.UUID(str(row["ledger_entry_id"])),
        create_time=row["create_time"],
        item_count=int(row["item_count"]),
        files=tuple(ExportFile(**f) for f in row["files"]),
        manifest_signature=bytes(row["manifest_signature"] or b""),
        signing_key_name=row["signing_key_name"],
        checkpoint=bytes(row["checkpoint"] or b""),
        tree_size=int(row["tree_size"] or 0),
        error=row["error"] or "",
        complete_time=row["complete_time"],
        expire_time=row["expire_time"],
        principal=row["principal"],
    )
