"""What many test modules need: reading an RPC error's google.rpc details, and
reading any schema as the superuser (the ledger's queue and log included)."""

from __future__ import annotations

import json
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import text

from avgate.kernel.db import sync_engine


def details(error: grpc.aio.AioRpcError, message_type: type) -> list[Any]:
    """The details of `message_type` an RPC error carries."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error carries google.rpc details"
    return unpack(status.details, message_type)


def unpack(packed: Any, message_type: type) -> list[Any]:
    """The `message_type` messages among packed google.protobuf.Any details (a google.rpc.Status's)."""
    found = []
    for detail in packed:
        if detail.Is(message_type.DESCRIPTOR):
            message = message_type()
            detail.Unpack(message)
            found.append(message)
    return found


def violated_fields(error: grpc.aio.AioRpcError) -> set[str]:
    """The fields an INVALID_ARGUMENT names in its BadRequest."""
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error
    (bad,) = details(error, error_details_pb2.BadRequest)
    return {v.field for v in bad.field_violations}


def admin_sql(admin_url: str, query: str, **params: Any) -> list[Any]:
    """Rows of `query` run as the superuser, who sees every schema."""
    engine = sync_engine(admin_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(query), params).all())
    finally:
        engine.dispose()


def ledger_entries(admin_url: str, action: str, subject_id: str | None = None) -> list[dict[str, Any]]:
    """Ledger entries with `action` (and subject id), queued or already sequenced, in append order."""
    rows = admin_sql(
        admin_url,
        "select doc from ("
        " select convert_from(payload, 'UTF8')::jsonb as doc, 0 as sequenced, queue_id as n from ledger.queue"
        " union all select convert_from(payload, 'UTF8')::jsonb, 1, leaf_index from ledger.entries) e "
        "where doc ->> 'action' = :a and (cast(:s as text) is null or doc #>> '{subject,id}' = :s) "
        "order by sequenced desc, n",
        a=action,
        s=subject_id,
    )
    return [row[0] if isinstance(row[0], dict) else json.loads(row[0]) for row in rows]
