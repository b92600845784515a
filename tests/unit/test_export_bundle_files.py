"""An export bundle is readable by the reporting account alone: its folder is 0700 and every file in it
0600, whatever the umask the process runs under (a bundle holds incident reports, and other accounts
on the machine must not read them)."""

from __future__ import annotations

import os
import pathlib
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from avgate.kernel.keys import SigningKey
from avgate.kernel.principal import Principal, Role
from services.reporting.feed.exports import FILE_NAMES, Export, ExportBuilder
from services.reporting.feed.service import FeedRequest
from services.reporting.ledger.store import Head

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class OnePendingExport:
    """An export store holding one pending export, which the builder finishes."""

    def __init__(self, export: Export):
        self.pending: Export | None = export
        self.finished: list[Export] = []

    async def due_for_expiry(self, now: datetime) -> list[str]:
        return []

    async def states(self, export_ids: Any) -> dict[str, str]:
        return {}

    async def lease_pending(self, lease: timedelta) -> Export | None:
        export, self.pending = self.pending, None
        return export

    async def finish(self, export: Export, audit: Any) -> None:
        self.finished.append(export)


class NoIncidents:
    async def list(self, query: Any, *, after: Any, limit: int) -> list[Any]:
        return []


class SignedHead:
    async def leaf_index_of(self, entry_id: uuid.UUID) -> int:
        return 0

    async def latest_head(self) -> Head:
        return Head(
            tree_size=1, root_hash=bytes(32), checkpoint=b"avgate.test/ledger\n1\n", key_name="k", signed_at=NOW
        )


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_built_bundle_is_0600_files_in_a_0700_folder(tmp_path: pathlib.Path, umask: int) -> None:
    export = Export(
        export_id=f"exp_{uuid.uuid4().hex}",
        requested_by="operator:op",
        request_id="handover-1",
        request=FeedRequest(),
        state="pending",
        ledger_entry_id=uuid.uuid4(),
        create_time=NOW,
        principal=Principal(role=Role.OPERATOR, subject="op").to_claims(),
    )
    store = OnePendingExport(export)
    directory = tmp_path / "exports"
    builder = ExportBuilder(
        store,  # type: ignore[arg-type]
        NoIncidents(),  # type: ignore[arg-type]
        SignedHead(),  # type: ignore[arg-type]
        SigningKey("reporting", Ed25519PrivateKey.generate()),
        directory,
        ttl=timedelta(hours=1),
        clock=lambda: NOW,
    )

    assert await builder.step()

    (built,) = store.finished
    assert built.state == "ready", built.error
    bundle = directory / export.export_id
    assert mode(directory) == 0o700
    assert mode(bundle) == 0o700
    assert sorted(p.name for p in bundle.iterdir()) == sorted(FILE_NAMES.values())
    assert {p.name: mode(p) for p in bundle.iterdir()} == {name: 0o600 for name in FILE_NAMES.values()}
