"""Where API keys live: a small interface, its SQL implementation and an
in-memory fake for unit tests (both pass one contract suite)."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from avgate.kernel.paging import Cursor
from avgate.kernel.principal import RegulatorScope, Role
from avgate.ledger.append import append as ledger_append
from avgate.ledger.entry import LedgerEntry, canonical_bytes
from gateway.domain import ApiKey, StoredApiKey
from gateway.models import api_keys


class ApiKeyStore(Protocol):
    """Every change is written together with its audit-ledger entry, or not at all."""

    async def add(self, stored: StoredApiKey, audit: LedgerEntry) -> None: ...

    async def get(self, key_id: str) -> StoredApiKey | None: ...

    async def list(
        self, *, tenant_id: str | None, include_revoked: bool, after: Cursor | None, limit: int
    ) -> builtins.list[ApiKey]: ...

    async def save(self, stored: StoredApiKey, audit: LedgerEntry) -> None:
        """Writes the fields a revoke or rotate changes (last use has record_use)."""
        ...

    async def record_use(self, key_id: str, when: datetime) -> None:
        """Writes last use alone, so it cannot undo a concurrent revoke or rotate."""
        ...

    async def active_development_keys(self, now: datetime) -> builtins.list[ApiKey]: ...


def _sort_key(key: ApiKey) -> Cursor:
    return (key.create_time, key.key_id)


class InMemoryApiKeyStore:
    def __init__(self) -> None:
        self._rows: dict[str, StoredApiKey] = {}
        self.ledger: builtins.list[LedgerEntry] = []

    async def add(self, stored: StoredApiKey, audit: LedgerEntry) -> None:
        if stored.key.key_id in self._rows:
            raise KeyError(stored.key.key_id)
        canonical_bytes(audit)  # refuses what the real ledger would refuse
        self._rows[stored.key.key_id] = stored
        self.ledger.append(audit)

    async def get(self, key_id: str) -> StoredApiKey | None:
        return self._rows.get(key_id)

    async def list(
        self, *, tenant_id: str | None, include_revoked: bool, after: Cursor | None, limit: int
    ) -> builtins.list[ApiKey]:
        keys = sorted((s.key for s in self._rows.values()), key=_sort_key)
        return [
            k
            for k in keys
            if (tenant_id is None or k.tenant_id == tenant_id)
            and (include_revoked or k.revoke_time is None)
            and (after is None or _sort_key(k) > after)
        ][:limit]

    async def save(self, stored: StoredApiKey, audit: LedgerEntry) -> None:
        canonical_bytes(audit)
        existing = self._rows.get(stored.key.key_id)
        if existing is not None:  # last use is record_use's alone
            stored = stored.with_key(last_used_time=existing.key.last_used_time)
        self._rows[stored.key.key_id] = stored
        self.ledger.append(audit)

    async def record_use(self, key_id: str, when: datetime) -> None:
        stored = self._rows.get(key_id)
        if stored is not None:
            self._rows[key_id] = stored.with_key(last_used_time=when)

    async def active_development_keys(self, now: datetime) -> builtins.list[ApiKey]:
        return [s.key for s in self._rows.values() if s.key.development and s.key.is_active(now)]


class SqlApiKeyStore:
    def __init__(self, engine: AsyncEngine):
        self._engine = engine

    async def add(self, stored: StoredApiKey, audit: LedgerEntry) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(api_keys.insert().values(**_to_row(stored)))
            await ledger_append(conn, audit)

    async def get(self, key_id: str) -> StoredApiKey | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.key_id == key_id))).mappings().first()
        return _from_row(row) if row is not None else None

    async def list(
        self, *, tenant_id: str | None, include_revoked: bool, after: Cursor | None, limit: int
    ) -> builtins.list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.create_time, api_keys.c.key_id).limit(limit)
        if tenant_id is not None:
            query = query.where(api_keys.c.tenant_id == tenant_id)
        if not include_revoked:
            query = query.where(api_keys.c.revoke_time.is_(None))
        if after is not None:
            query = query.where(
                or_(
                    api_keys.c.create_time > after[0],
                    and_(api_keys.c.create_time == after[0], api_keys.c.key_id > after[1]),
                )
            )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_from_row(r).key for r in rows]

    async def save(self, stored: StoredApiKey, audit: LedgerEntry) -> None:
        row = _to_row(stored)
        mutable = {
            k: row[k]
            for k in (
                "secret_hash",
                "previous_secret_hash",
                "previous_secret_expire_time",
                "revoke_time",
                "revoke_reason",
            )
        }
        async with self._engine.begin() as conn:
            await conn.execute(update(api_keys).where(api_keys.c.key_id == stored.key.key_id).values(**mutable))
            await ledger_append(conn, audit)

    async def record_use(self, key_id: str, when: datetime) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(api_keys).where(api_keys.c.key_id == key_id).values(last_used_time=when))

    async def active_development_keys(self, now: datetime) -> builtins.list[ApiKey]:
        query = select(api_keys).where(
            api_keys.c.development.is_(True),
            api_keys.c.revoke_time.is_(None),
            or_(api_keys.c.expire_time.is_(None), api_keys.c.expire_time > now),
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_from_row(r).key for r in rows]


def _to_row(stored: StoredApiKey) -> dict[str, Any]:
    key = stored.key
    scope = key.regulator_scope
    return {
        "key_id": key.key_id,
        "display_name": key.display_name,
        "role": key.role.value,
        "tenant_id": key.tenant_id,
        "regulator_departments": list(scope.departments) if scope else None,
        "regulator_regions": list(scope.region_codes) if scope else None,
        "secret_hash": stored.secret_hash,
        "previous_secret_hash": stored.previous_secret_hash,
        "previous_secret_expire_time": stored.previous_secret_expire_time,
        "create_time": key.create_time,
        "created_by": key.created_by,
        "expire_time": key.expire_time,
        "revoke_time": key.revoke_time,
        "revoke_reason": key.revoke_reason,
        "last_used_time": key.last_used_time,
        "development": key.development,
        "client_certificate_sha256": key.client_certificate_sha256,
    }


def _from_row(row: Any) -> StoredApiKey:
    scope = None
    if row["regulator_departments"] is not None:
        scope = RegulatorScope(tuple(row["regulator_departments"]), tuple(row["regulator_regions"] or ()))
    key = ApiKey(
        key_id=row["key_id"],
        display_name=row["display_name"],
        role=Role(row["role"]),
        tenant_id=row["tenant_id"],
        regulator_scope=scope,
        create_time=row["create_time"],
        created_by=row["created_by"],
        expire_time=row["expire_time"],
        revoke_time=row["revoke_time"],
        revoke_reason=row["revoke_reason"],
        last_used_time=row["last_used_time"],
        development=row["development"],
        client_certificate_sha256=row["client_certificate_sha256"],
    )
    return StoredApiKey(
        key=key,
        secret_hash=bytes(row["secret_hash"]),
        previous_secret_hash=bytes(row["previous_secret_hash"]) if row["previous_secret_hash"] else None,
        previous_secret_expire_time=row["previous_secret_expire_time"],
    )
