"""Where refuted rumours live: a small interface and its SQL implementation.

An addition and a retirement each write the change and its ledger entry in
one transaction. `version` is the cheap change check that tells a replica's
match index it is stale: entries are only ever inserted and retired (never
deleted, never un-retired), so the pair (entries, retired entries) grows
with every change, whatever the order in which transactions commit.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy.exc
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from avgate.kernel.db import violated_constraint
from avgate.kernel.paging import Cursor
from avgate.ledger.append import append as ledger_append
from avgate.ledger.entry import LedgerEntry
from services.reporting.models import refuted_rumors
from services.reporting.rumors.domain import RefutedRumor, RequestIdTaken, RumorQuery
from services.reporting.rumors.matching import IndexEntry


class RumorStore(Protocol):
    async def add(self, rumor: RefutedRumor, audit: LedgerEntry) -> None:
        """Writes the entry with its ledger entry; RequestIdTaken when (owner, request id) is taken."""
        ...

    async def find_by_request(self, owner: str, request_id: str) -> RefutedRumor | None: ...

    async def get(self, rumor_id: str) -> RefutedRumor | None: ...

    async def get_many(self, rumor_ids: Sequence[str]) -> dict[str, RefutedRumor]: ...

    async def list(self, query: RumorQuery, *, after: Cursor | None, limit: int) -> builtins.list[RefutedRumor]: ...

    async def retire(self, rumor_id: str, when: datetime, reason: str, audit: LedgerEntry) -> RefutedRumor | None:
        """Retires the entry with its ledger entry; an entry retired already is returned unchanged
        and nothing is written; None when there is no such entry."""
        ...

    async def record(self, audit: LedgerEntry) -> None:
        """Writes a ledger entry alone (a regulator's read)."""
        ...

    async def version(self) -> tuple[int, int]:
        """(entries, retired entries): changes whenever an entry is added or retired."""
        ...

    async def active_claims(self) -> builtins.list[IndexEntry]:
        """Every active entry's id, owner and claim: what the match index is built from."""
        ...


class SqlRumorStore:
    def __init__(self, engine: AsyncEngine):
        self._engine = engine

    async def add(self, rumor: RefutedRumor, audit: LedgerEntry) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(refuted_rumors.insert().values(**_to_row(rumor)))
                await ledger_append(conn, audit)
        except sqlalchemy.exc.IntegrityError as exc:
            # Only the (owner, request id) key can collide: rumour ids are random.
            if violated_constraint(exc) != "refuted_rumors_tenant_request_id_key":
                raise
            raise RequestIdTaken(rumor.tenant_id, rumor.request_id) from exc

    async def find_by_request(self, owner: str, request_id: str) -> RefutedRumor | None:
        c = refuted_rumors.c
        query = select(refuted_rumors).where(c.tenant_id == owner, c.request_id == request_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return _from_row(row) if row is not None else None

    async def get(self, rumor_id: str) -> RefutedRumor | None:
        found = await self.get_many([rumor_id])
        return found.get(rumor_id)

    async def get_many(self, rumor_ids: Sequence[str]) -> dict[str, RefutedRumor]:
        if not rumor_ids:
            return {}
        query = select(refuted_rumors).where(refuted_rumors.c.rumor_id.in_(list(set(rumor_ids))))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return {r["rumor_id"]: _from_row(r) for r in rows}

    async def list(self, query: RumorQuery, *, after: Cursor | None, limit: int) -> builtins.list[RefutedRumor]:
        c = refuted_rumors.c
        statement = select(refuted_rumors).order_by(c.create_time.desc(), c.rumor_id.desc()).limit(limit)
        if query.owners is not None:
            statement = statement.where(c.tenant_id.in_(query.owners))
        if not query.include_retired:
            statement = statement.where(c.retire_time.is_(None))
        if query.issuing_authority is not None:
            statement = statement.where(c.issuing_authority == query.issuing_authority)
        if query.published_from is not None:
            statement = statement.where(c.publish_time >= query.published_from)
        if query.published_before is not None:
            statement = statement.where(c.publish_time < query.published_before)
        if after is not None:
            statement = statement.where(
                or_(c.create_time < after[0], and_(c.create_time == after[0], c.rumor_id < after[1]))
            )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [_from_row(r) for r in rows]

    async def retire(self, rumor_id: str, when: datetime, reason: str, audit: LedgerEntry) -> RefutedRumor | None:
        c = refuted_rumors.c
        async with self._engine.begin() as conn:
            # The row lock makes a concurrent retirement wait and then find the first.
            row = (
                (await conn.execute(select(refuted_rumors).where(c.rumor_id == rumor_id).with_for_update()))
                .mappings()
                .first()
            )
            if row is None:
                return None
            if row["retire_time"] is not None:
                return _from_row(row)
            changed = (
                (
                    await conn.execute(
                        update(refuted_rumors)
                        .where(c.rumor_id == rumor_id)
                        .values(retire_time=when, retire_reason=reason)
                        .returning(refuted_rumors)
                    )
                )
                .mappings()
                .one()
            )
            await ledger_append(conn, audit)
        return _from_row(changed)

    async def record(self, audit: LedgerEntry) -> None:
        async with self._engine.begin() as conn:
            await ledger_append(conn, audit)

    async def version(self) -> tuple[int, int]:
        query = select(func.count(), func.count(refuted_rumors.c.retire_time))
        async with self._engine.connect() as conn:
            total, retired = (await conn.execute(query)).one()
        return int(total), int(retired)

    async def active_claims(self) -> builtins.list[IndexEntry]:
        c = refuted_rumors.c
        query = select(c.rumor_id, c.tenant_id, c.claim_text).where(c.retire_time.is_(None))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [IndexEntry(r.rumor_id, r.tenant_id, r.claim_text) for r in rows]


def _to_row(rumor: RefutedRumor) -> dict[str, Any]:
    return {
        "rumor_id": rumor.rumor_id,
        "tenant_id": rumor.tenant_id,
        "request_id": rumor.request_id,
        "request_hash": rumor.request_hash,
        "claim_text": rumor.claim_text,
        "refutation_text": rumor.refutation_text,
        "refutation_url": rumor.refutation_url,
        "issuing_authority": rumor.issuing_authority,
        "publish_time": rumor.publish_time,
        "create_time": rumor.create_time,
        "retire_time": rumor.retire_time,
        "retire_reason": rumor.retire_reason,
        "ledger_entry_id": rumor.ledger_entry_id,
    }


def _from_row(row: Any) -> RefutedRumor:
    return RefutedRumor(
        rumor_id=row["rumor_id"],
        tenant_id=row["tenant_id"],
        claim_text=row["claim_text"],
        refutation_text=row["refutation_text"],
        refutation_url=row["refutation_url"],
        issuing_authority=row["issuing_authority"],
        publish_time=row["publish_time"],
        create_time=row["create_time"],
        request_id=row["request_id"],
        request_hash=bytes(row["request_hash"]),
        ledger_entry_id=uuid.UUID(str(row["ledger_entry_id"])),
        retire_time=row["retire_time"],
        retire_reason=row["retire_reason"],
    )
