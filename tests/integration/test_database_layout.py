"""One schema, one role and one Alembic history per process."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from avgate.kernel import migrations
from avgate.kernel.db import SCHEMA_OWNERS, sync_engine
from tests.conftest import Database


@pytest.mark.parametrize("owner", SCHEMA_OWNERS, ids=[o.name for o in SCHEMA_OWNERS])
def test_models_and_migrations_agree(database: Database, owner: object) -> None:
    migrations.check(owner, database.url_for(owner.name))  # type: ignore[attr-defined]


@pytest.mark.parametrize("owner", SCHEMA_OWNERS, ids=[o.name for o in SCHEMA_OWNERS])
def test_each_schema_is_owned_by_its_role_and_keeps_its_own_history(database: Database, owner: object) -> None:
    engine = sync_engine(database.admin_url)
    with engine.connect() as conn:
        schema_owner = conn.execute(
            text("select nspowner::regrole::text from pg_namespace where nspname = :s"),
            {"s": owner.schema},  # type: ignore[attr-defined]
        ).scalar_one()
        versions = conn.execute(text(f'select count(*) from "{owner.schema}".alembic_version')).scalar_one()  # type: ignore[attr-defined]
    engine.dispose()
    assert schema_owner == owner.role  # type: ignore[attr-defined]
    assert versions == 1


def test_a_service_role_cannot_read_another_schema(database: Database) -> None:
    engine = sync_engine(database.url_for("identity"))
    try:
        with engine.connect() as conn, pytest.raises(ProgrammingError, match="permission denied"):
            conn.execute(text("select count(*) from gateway.api_keys"))
    finally:
        engine.dispose()
