"""Alembic environment shared by every schema (see the package docstring)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
owner = config.attributes["owner"]
metadata = owner.metadata()
if metadata.schema != owner.schema:
    # The models' SCHEMA names the schema their tables live in; it must be the one this process owns.
    raise SystemExit(f"{owner.package}.models puts its tables in {metadata.schema!r}, not {owner.schema!r}")


def include_name(name, type_, parent_names):  # type: ignore[no-untyped-def]
    if type_ == "schema":
        return name == owner.schema
    return True


def run_migrations_online() -> None:
    engine = create_engine(config.attributes["url"], poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table_schema=owner.schema,
            include_schemas=True,
            include_name=include_name,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run against a database")
run_migrations_online()
