"""The deliveries revision gives reports queued before it their subject rows."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from avgate.kernel import migrations
from avgate.kernel.db import bootstrap_database, create_database, drop_database, owner, role_url, sync_engine

BEFORE_DELIVERIES = "b3e5d1a7c902"


@pytest.fixture
def admin_url(server_admin_url: str) -> Iterator[str]:
    name = f"avgate_m_{uuid.uuid4().hex[:8]}"
    url = create_database(server_admin_url, name)
    try:
        bootstrap_database(url)
        yield url
    finally:
        drop_database(server_admin_url, name)


@pytest.mark.db
def test_reports_queued_before_the_revision_get_their_subjects(admin_url: str) -> None:
    reporting = owner("reporting")
    reporting_url = role_url(admin_url, reporting.role)
    migrations.upgrade(owner("ledger"), role_url(admin_url, owner("ledger").role))
    migrations.upgrade(reporting, reporting_url, BEFORE_DELIVERIES)
    event_id = uuid.uuid4()
    engine = sync_engine(reporting_url)
    try:
        with engine.connect() as conn:
            conn.execute(
                text(
                    "insert into reporting.incidents (incident_id, tenant_id, external_id, content_hash, source, "
                    "category, legal_basis, facts, content, automated_detection, automated_decision, region_code, "
                    "evidence, related, route_departments, route_regions, status, acknowledgements, create_time, "
                    "update_time, ledger_entry_id) values ('inc1', 'acme', 'e1', '\\x00', 'provider', 'rumor', "
                    "'[]', 'f', '[]', false, false, '310101', '[]', '[]', '{cyberspace}', '{310101}', 'recorded', "
                    "'[]', now(), now(), gen_random_uuid())"
                )
            )
            conn.execute(
                text("insert into reporting.outbox (event_id, destination, payload) values (:e, :d, :p)"),
                {"e": event_id, "d": "authority:cyberspace", "p": json.dumps({"incident_id": "inc1"}).encode()},
            )
        migrations.upgrade(reporting, reporting_url)
        with engine.connect() as conn:
            rows = conn.execute(text("select * from reporting.delivery_subjects")).mappings().all()
            created_at = conn.execute(text("select created_at from reporting.outbox")).scalar_one()
    finally:
        engine.dispose()
    (row,) = rows
    assert (row["event_id"], row["tenant_id"], row["subject_kind"], row["subject_id"]) == (
        event_id,
        "acme",
        "incident",
        "inc1",
    )
    assert (row["department"], row["region_code"], row["replay_count"]) == ("cyberspace", "310101", 0)
    assert row["create_time"] == created_at
