"""Reading any schema as the superuser: the ledger's queue and log, and PostgreSQL's own log."""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import text

from avgate.kernel.db import sync_engine


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


class ServerLog:
    """PostgreSQL's own log file, read through the server by the superuser (pg_read_file).

    Found where the server says it writes (`pg_current_logfile()`, with the logging collector
    on), where the embedded server's pg_ctl sends it (`<data directory>/log`), or where a
    Debian cluster's does (`/var/log/postgresql/postgresql-<version>-<cluster>.log`).
    """

    def __init__(self, admin_url: str):
        self._admin_url = admin_url
        self.path = self._find()

    def _find(self) -> str:
        (current,) = admin_sql(self._admin_url, "select pg_current_logfile()")[0]
        (data_dir,) = admin_sql(self._admin_url, "show data_directory")[0]
        candidates = []
        if current:
            candidates.append(current if current.startswith("/") else f"{data_dir}/{current}")
        candidates.append(f"{data_dir}/log")
        debian = re.fullmatch(r"/var/lib/postgresql/(\d+)/([\w-]+)", data_dir)
        if debian:
            candidates.append(f"/var/log/postgresql/postgresql-{debian[1]}-{debian[2]}.log")
        for path in candidates:
            found = admin_sql(self._admin_url, "select size from pg_stat_file(:p, true)", p=path)
            if found and found[0][0] is not None:
                return path
        raise AssertionError(f"cannot find PostgreSQL's log among {candidates}")

    def size(self) -> int:
        return int(admin_sql(self._admin_url, "select size from pg_stat_file(:p)", p=self.path)[0][0])

    def since(self, mark: int) -> str:
        """What the server logged after `mark` (a size from `size()`)."""
        length = self.size() - mark
        if length <= 0:
            return ""
        data = admin_sql(self._admin_url, "select pg_read_binary_file(:p, :o, :n)", p=self.path, o=mark, n=length)[0][0]
        return bytes(data).decode("utf-8", errors="replace")
