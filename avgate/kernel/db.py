"""The database: one PostgreSQL database, one schema and one role per process.

Each process owns one schema (its tables live there and nowhere else), logs
in as its own role (`avgate_<name>`), and has its own URL setting
(`<NAME>_DATABASE_URL`) falling back to DATABASE_URL. `bootstrap_database`
is what an operator (or the local stack) runs once with an admin URL: it
creates the roles and the schemas, each owned by its process's role, so a
role can change only its own schema.
"""

from __future__ import annotations

import importlib
import pathlib
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


@dataclass(frozen=True)
class SchemaOwner:
    """A process that owns a schema with its own migration history."""

    name: str
    package: str

    @property
    def schema(self) -> str:
        return self.name

    @property
    def role(self) -> str:
        return f"avgate_{self.name}"

    @property
    def url_env(self) -> str:
        return f"{self.name.upper()}_DATABASE_URL"

    @property
    def versions_dir(self) -> pathlib.Path:
        module = importlib.import_module(self.package)
        return pathlib.Path(module.__file__ or "").parent / "migrations"

    def metadata(self):  # type: ignore[no-untyped-def]
        return importlib.import_module(f"{self.package}.models").metadata


SCHEMA_OWNERS: tuple[SchemaOwner, ...] = (
    SchemaOwner("gateway", "gateway"),
    SchemaOwner("identity", "services.identity"),
    SchemaOwner("screening", "services.screening"),
    SchemaOwner("reporting", "services.reporting"),
    SchemaOwner("complaints", "services.complaints"),
    # The shared audit ledger: owned by its own role, which only migrations use.
    # Its migration grants every role above its narrow share (see avgate/ledger/migrations).
    SchemaOwner("ledger", "avgate.ledger"),
)

# Roles with a share of the ledger but no schema of their own.
LEDGER_SEQUENCER_ROLE = "avgate_ledger_sequencer"
LEDGER_PRUNER_ROLE = "avgate_ledger_pruner"
EXTRA_ROLES = (LEDGER_SEQUENCER_ROLE, LEDGER_PRUNER_ROLE)


def owner(name: str) -> SchemaOwner:
    for o in SCHEMA_OWNERS:
        if o.name == name:
            return o
    raise KeyError(name)


def sqlalchemy_url(url: str) -> URL:
    """A libpq-style URL as SQLAlchemy's psycopg (v3) dialect URL."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    if parsed.drivername in ("postgresql", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def role_url(admin_url: str, role: str) -> str:
    """The admin URL with the user replaced by a service role (trust or peer auth)."""
    return sqlalchemy_url(admin_url).set(username=role, password=None).render_as_string(hide_password=False)


async def transaction_driver(conn: Any, what: str) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under `conn` (a SQLAlchemy AsyncConnection or psycopg's own),
    refusing one outside a transaction: what a library call writes there must commit with
    the caller's change or not at all. Library calls on hot paths (the ledger's append, the
    outbox's enqueue) go to the driver because the layers above cost more than the insert."""
    if isinstance(conn, psycopg.AsyncConnection):
        idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if conn.autocommit and idle:
            raise RuntimeError(f"{what} needs the caller's open transaction; this connection is in autocommit")
        return conn
    if not conn.in_transaction():
        # Without a begun SQLAlchemy transaction the row would ride on a driver transaction
        # SQLAlchemy does not know about, and vanish when the connection goes back to the pool.
        raise RuntimeError(f"{what} needs the caller's open transaction; begin one first")
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert isinstance(driver, psycopg.AsyncConnection), f"{what} needs the psycopg (v3) driver"
    return driver


def libpq_url(url: str) -> str:
    """A URL psycopg (and libpq) accept directly, from any form we take."""
    return sqlalchemy_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_engine_for(url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(sqlalchemy_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def sync_engine(url: str) -> Engine:
    return create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT")


def bootstrap_database(admin_url: str) -> None:
    """Creates every process's role and schema (idempotent)."""
    engine = sync_engine(admin_url)
    try:
        with engine.connect() as conn:
            database = conn.execute(text("select current_database()")).scalar_one()
            for role in EXTRA_ROLES:
                if not conn.execute(text("select 1 from pg_roles where rolname = :r"), {"r": role}).first():
                    conn.execute(text(f'create role "{role}" login'))
                conn.execute(text(f'grant connect on database "{database}" to "{role}"'))
            for o in SCHEMA_OWNERS:
                exists = conn.execute(text("select 1 from pg_roles where rolname = :r"), {"r": o.role}).first()
                if not exists:
                    conn.execute(text(f'create role "{o.role}" login'))
                conn.execute(text(f'grant connect on database "{database}" to "{o.role}"'))
                conn.execute(text(f'create schema if not exists "{o.schema}" authorization "{o.role}"'))
                conn.execute(text(f'alter schema "{o.schema}" owner to "{o.role}"'))
    finally:
        engine.dispose()


def create_database(admin_url: str, name: str, template: str | None = None) -> str:
    """Creates database `name` on the admin URL's server; returns its admin URL."""
    engine = sync_engine(admin_url)
    try:
        with engine.connect() as conn:
            exists = conn.execute(text("select 1 from pg_database where datname = :n"), {"n": name}).first()
            if not exists:
                clause = f' template "{template}"' if template else ""
                conn.execute(text(f'create database "{name}"{clause}'))
    finally:
        engine.dispose()
    return sqlalchemy_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    engine = sync_engine(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f'drop database if exists "{name}" with (force)'))
    finally:
        engine.dispose()


def violated_constraint(exc: BaseException) -> str | None:
    """The name of the constraint a database error violated, as PostgreSQL reports it.

    Read from the driver's diagnostics (`exc.orig.diag.constraint_name` for
    SQLAlchemy's IntegrityError, `exc.diag` for psycopg's own), never by
    matching message text, which changes with the server's language.
    """
    orig = getattr(exc, "orig", exc)
    diag = getattr(orig, "diag", None)
    name = getattr(diag, "constraint_name", None)
    return name if isinstance(name, str) and name else None
