"""Reads of the ledger for heads, proofs and entries (the reporting role has
SELECT on the ledger; only the sequencer writes it), and of the routes that
decide which entries a regulator reads in full (`SqlRecordScopes`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from avgate.ledger import merkle
from services.reporting.domain import Route
from services.reporting.ledger.visibility import ScopeQuery, Scopes


@dataclass(frozen=True)
class Head:
    tree_size: int
    root_hash: bytes
    checkpoint: bytes
    key_name: str
    signed_at: datetime


@dataclass(frozen=True)
class StoredEntry:
    leaf_index: int
    entry_id: uuid.UUID
    payload: bytes
    leaf_hash: bytes
    integrated_at: datetime


@dataclass(frozen=True)
class PublishedKey:
    vkey: str
    valid_from: datetime
    valid_until: datetime | None


_HEAD = "select tree_size, root_hash, checkpoint, key_name, signed_at from ledger.heads"


def _head(row: Any) -> Head:
    return Head(int(row[0]), bytes(row[1]), bytes(row[2]), row[3], row[4])


class LedgerReader:
    def __init__(self, pool: AsyncConnectionPool[Any]):
        self._pool = pool

    async def _fetchall(self, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def latest_head(self) -> Head | None:
        rows = await self._fetchall(f"{_HEAD} order by tree_size desc limit 1")
        return _head(rows[0]) if rows else None

    async def head(self, tree_size: int) -> Head | None:
        rows = await self._fetchall(f"{_HEAD} where tree_size = %s", (tree_size,))
        return _head(rows[0]) if rows else None

    async def heads(self) -> list[Head]:
        return [_head(r) for r in await self._fetchall(f"{_HEAD} order by tree_size")]

    async def leaf_index_of(self, entry_id: uuid.UUID) -> int | None:
        rows = await self._fetchall("select leaf_index from ledger.entries where entry_id = %s", (entry_id,))
        return int(rows[0][0]) if rows else None

    async def nodes(self, refs: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        if not refs:
            return {}
        rows = await self._fetchall(
            "select n.level, n.idx, n.hash from ledger.nodes n "
            "join unnest(%s::smallint[], %s::bigint[]) as want(level, idx) using (level, idx)",
            ([r[0] for r in refs], [r[1] for r in refs]),
        )
        found = {(int(level), int(idx)): bytes(h) for level, idx, h in rows}
        missing = [r for r in refs if r not in found]
        if missing:
            raise LookupError(f"ledger nodes missing: {missing[:5]}")
        return found

    async def leaf_hash(self, index: int) -> bytes:
        return (await self.nodes([(0, index)]))[(0, index)]

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        refs = merkle.inclusion_proof_nodes(index, tree_size)
        return merkle.assemble_proof(refs, await self.nodes(merkle.required_node_ids(refs)))

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        refs = merkle.consistency_proof_nodes(first, second)
        return merkle.assemble_proof(refs, await self.nodes(merkle.required_node_ids(refs)))

    async def entries(self, start: int, end: int) -> list[StoredEntry]:
        rows = await self._fetchall(
            "select e.leaf_index, e.entry_id, e.payload, n.hash, e.integrated_at from ledger.entries e "
            "join ledger.nodes n on n.level = 0 and n.idx = e.leaf_index "
            "where e.leaf_index >= %s and e.leaf_index < %s order by e.leaf_index",
            (start, end),
        )
        return [StoredEntry(int(r[0]), r[1], bytes(r[2]), bytes(r[3]), r[4]) for r in rows]

    async def first_retained_index(self) -> int:
        rows = await self._fetchall("select coalesce(max(last_index) + 1, 0) from ledger.archives")
        return int(rows[0][0])

    async def signing_keys(self) -> list[PublishedKey]:
        rows = await self._fetchall("select vkey, valid_from from ledger.signing_keys order by valid_from, key_id")
        keys = []
        for i, (vkey, valid_from) in enumerate(rows):
            until = rows[i + 1][1] if i + 1 < len(rows) else None
            keys.append(PublishedKey(vkey, valid_from, until))
        return keys


# One arm per routed record type; each probes its own primary key or index (`= any`), so a
# page of 1000 entries costs one round trip, whatever it holds.
_ROUTES = (
    "select 'incident', i.incident_id, i.route_departments, i.route_regions from reporting.incidents i "
    "where i.incident_id = any(%(incident)s) "
    "union all "
    "select 'evidence', a.evidence_id, i.route_departments, i.route_regions "
    "from reporting.evidence_attachments a join reporting.incidents i on i.incident_id = a.incident_id "
    "where a.evidence_id = any(%(evidence)s) "
    "union all "
    "select 'security_assessment', s.assessment_id, i.route_departments, i.route_regions "
    "from reporting.security_assessments s join reporting.incidents i on i.incident_id = s.incident_id "
    "where s.assessment_id = any(%(security_assessment)s)"
)


class SqlRecordScopes:
    """The routes of incidents, evidence and assessments, and the owners of exports, by id."""

    def __init__(self, pool: AsyncConnectionPool[Any]):
        self._pool = pool

    async def scopes(self, query: ScopeQuery) -> Scopes:
        routes: dict[tuple[str, str], list[Route]] = {}
        owners: dict[str, str] = {}
        async with self._pool.connection() as conn:
            if any(query.ids.values()):
                params = {k: sorted(query.ids.get(k, ())) for k in ("incident", "evidence", "security_assessment")}
                cur = await conn.execute(_ROUTES, params)
                for kind, record_id, departments, regions in await cur.fetchall():
                    # Every route department in every route region, as the incident store reads them.
                    found = routes.setdefault((kind, record_id), [])
                    found.extend(Route(d, r) for d in departments for r in regions)
            if query.export_ids:
                cur = await conn.execute(
                    "select export_id, principal->>'sub' from reporting.exports where export_id = any(%s)",
                    (sorted(query.export_ids),),
                )
                owners = {export_id: owner for export_id, owner in await cur.fetchall() if owner}
        return Scopes({k: tuple(v) for k, v in routes.items()}, owners)
