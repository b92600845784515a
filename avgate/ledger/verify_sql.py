"""The queries of `avgate ledger verify` (binary transfer) and the two helpers that run them."""

from __future__ import annotations

from typing import Any

import psycopg

# The fast pass, one window of leaf indexes [lo, hi) at a time: every payload in order with a
# cheap check that it names its row's entry_id, and all leaf hashes of the window as one value.
# PRIMARY KEYs make `count == hi - lo` mean "every index is present".
SQL_FAST_ENTRIES = (
    "select payload, position(convert_to('\"id\":\"' || entry_id::text || '\"', 'UTF8') in payload) > 0"
    " from ledger.entries where leaf_index >= %s and leaf_index < %s order by leaf_index"
)
# With parse_json: the server parses every payload and compares "id" and "key" exactly (slower).
SQL_FAST_ENTRIES_JSON = (
    "select payload,"
    " convert_from(payload, 'UTF8')::jsonb @> jsonb_build_object('id', entry_id::text, 'key', idempotency_key)"
    " from ledger.entries where leaf_index >= %s and leaf_index < %s order by leaf_index"
)
# (The subquery's order feeds the aggregate; were it ever not kept, the window would only
# fall back to the exact path.)
SQL_FAST_LEAVES = (
    "select count(*), string_agg(hash, ''::bytea) from"
    " (select hash from ledger.nodes where level = 0 and idx >= %s and idx < %s order by idx) as window_leaves"
)
# A window that fails the fast checks is re-read index by index and checked exactly here.
SQL_SLOW_ENTRIES = (
    "select leaf_index, payload, entry_id, idempotency_key from ledger.entries"
    " where leaf_index >= %s and leaf_index < %s order by leaf_index"
)
SQL_SLOW_LEAVES = "select idx, hash from ledger.nodes where level = 0 and idx >= %s and idx < %s order by idx"
SQL_NEXT_PRESENT = (
    "select least((select min(leaf_index) from ledger.entries where leaf_index >= %s),"
    " (select min(idx) from ledger.nodes where level = 0 and idx >= %s))"
)


async def fetch_rows(conn: psycopg.AsyncConnection[Any], query: str, params: tuple[Any, ...]) -> list[Any]:
    cur = conn.cursor(binary=True)
    await cur.execute(query, params)
    return await cur.fetchall()


async def fetch_scalar(conn: psycopg.AsyncConnection[Any], query: str, params: tuple[Any, ...] = ()) -> Any:
    rows = await fetch_rows(conn, query, params)
    return rows[0][0] if rows else None
