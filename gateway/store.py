"""Where API keys live: a small interface, its SQL implementation and an
in-memory fake for unit tests (both pass one contract suite)."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from avgate.kernel.paging import Cursor
from avgate.kernel.principal import RegulatorScope, Role
from avgate.ledger.append import append as ledger_append
from avgate.ledger.entry import LedgerEntry, canonical_bytes
from gateway.domain import ApiKey, RateLimit, StoredApiKey, TenantRateLimit
from gateway.models import api_keys, tenant_rate_limits


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

    async def save_rate_limit(self, key_id: str, limit: RateLimit | None, audit: LedgerEntry) -> None:
        """Writes a key's limit alone (None: back to the default), so it cannot undo a revoke or rotate."""
        ...

    async def get_tenant_rate_limit(self, tenant_id: str) -> TenantRateLimit | None: ...

    async def set_tenant_rate_limit(self, record: TenantRateLimit, audit: LedgerEntry) -> None:
        """Sets a tenant's limit, or removes it when `record.rate_limit` is None."""
        ...


def _sort_key(key: ApiKey) -> Cursor:
    return (key.create_time, key.key_id)


class InMemoryApiKeyStore:
    def __init__(self) -> None:
        self._rows: dict[str, StoredApiKey] = {}
        self._tenant_limits: dict[str, TenantRateLimit] = {}
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
        if existing is not None:  # last use is record_use's alone, the limit save_rate_limit's
            stored = stored.with_key(last_used_time=existing.key.last_used_time, rate_limit=existing.key.rate_limit)
        self._rows[stored.key.key_id] = stored
        self.ledger.append(audit)

    async def record_use(self, key_id: str, when: datetime) -> None:
        stored = self._rows.get(key_id)
        if stored is not None:
            self._rows[key_id] = stored.with_key(last_used_time=when)

    async def active_development_keys(self, now: datetime) -> builtins.list[ApiKey]:
        return [s.key for s in self._rows.values() if s.key.development and s.key.is_active(now)]

    async def save_rate_limit(self, key_id: str, limit: RateLimit | None, audit: LedgerEntry) -> None:
        canonical_bytes(audit)
        stored = self._rows.get(key_id)
        if stored is not None:
            self._rows[key_id] = stored.with_key(rate_limit=limit)
        self.ledger.append(audit)

    async def get_tenant_rate_limit(self, tenant_id: str) -> TenantRateLimit | None:
        return self._tenant_limits.get(tenant_id)

    async def set_tenant_rate_limit(self, record: TenantRateLimit, audit: LedgerEntry) -> None:
        canonical_bytes(audit)
        if record.rate_limit is None:
            self._tenant_limits.pop(record.tenant_id, None)
        else:
            self._tenant_limits[record.tenant_id] = record
        self.ledger.append(audit)


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

    async def save_rate_limit(self, key_id: str, limit: RateLimit | None, audit: LedgerEntry) -> None:
        values = {
            "rate_limit_rps": limit.requests_per_second if limit else None,
            "rate_limit_burst": limit.burst if limit else None,
        }
        async with self._engine.begin() as conn:
            await conn.execute(update(api_keys).where(api_keys.c.key_id == key_id).values(**values))
            await ledger_append(conn, audit)

    async def get_tenant_rate_limit(self, tenant_id: str) -> TenantRateLimit | None:
        query = select(tenant_rate_limits).where(tenant_rate_limits.c.tenant_id == tenant_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        return TenantRateLimit(
            tenant_id=row["tenant_id"],
            rate_limit=RateLimit(row["requests_per_second"], row["burst"]),
            update_time=row["update_time"],
            updated_by=row["updated_by"],
        )

    async def set_tenant_rate_limit(self, record: TenantRateLimit, audit: LedgerEntry) -> None:
        async with self._engine.begin() as conn:
            if record.rate_limit is None:
                await conn.execute(delete(tenant_rate_limits).where(tenant_rate_limits.c.tenant_id == record.tenant_id))
            else:
                values = {
                    "requests_per_second": record.rate_limit.requests_per_second,
                    "burst": record.rate_limit.burst,
                    "update_time": record.update_time,
                    "updated_by": record.updated_by,
                }
                upsert = insert(tenant_rate_limits).values(tenant_id=record.tenant_id, **values)
                await conn.execute(upsert.on_conflict_do_update(index_elements=["tenant_id"], set_=values))
            await ledger_append(conn, audit)


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
        "rate_limit_rps": key.rate_limit.requests_per_second if key.rate_limit else None,
        "rate_limit_burst": key.rate_limit.burst if key.rate_limit else None,
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
        rate_limit=RateLimit(row["rate_limit_rps"], row["rate_limit_burst"]) if row["rate_limit_rps"] else None,
        client_certificate_sha256=row["client_certificate_sha256"],
    )
    return StoredApiKey(
        key=key,
        secret_hash=bytes(row["secret_hash"]),
        previous_secret_hash=bytes(row["previous_secret_hash"]) if row["previous_secret_hash"] else None,
        previous_secret_expire_time=row["previous_secret_expire_time"],
    )
