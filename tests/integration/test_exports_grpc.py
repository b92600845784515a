"""Signed export bundles on the real reporting server: built in the background
with the requester's scope, every file as the manifest says, the manifest
signed by reporting's key, the checkpoint a verifying tree head that already
holds the export's own ledger entry; idempotent, private to the requester,
ledgered, and expired on time: files deleted before the expiry is recorded,
folders that a crash left behind swept."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import pathlib
import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from sqlalchemy import text

from avgate.common.v1 import common_pb2
from avgate.kernel import convert
from avgate.kernel.db import create_engine_for, sync_engine
from avgate.kernel.keys import SigningKey, load_private_key, load_trusted_keys
from avgate.kernel.principal import Principal, Role
from avgate.ledger.checkpoint import open_checkpoint
from avgate.ledger.entry import LedgerEntry
from avgate.reporting.v1 import reporting_pb2
from services.reporting.feed.export_store import SqlExportStore
from services.reporting.feed.exports import ExportBuilder, ExportService
from tests.support import details, regulator
from tests.support.reporting import CYBERSPACE_BEIJING, OPERATOR, Feed, create_many


def window() -> reporting_pb2.IncidentFilter:
    now = datetime.now(UTC)
    return reporting_pb2.IncidentFilter(
        create_time_range=common_pb2.TimeRange(
            start_time=convert.timestamp(now - timedelta(hours=1)), end_time=convert.timestamp(now + timedelta(hours=1))
        )
    )


async def create_export(
    f: Feed, principal: Principal, request_id: str, incidents: reporting_pb2.IncidentFilter
) -> reporting_pb2.ExportBundle:
    response = await f.feed.CreateExport(
        reporting_pb2.CreateExportRequest(request_id=request_id, filter=reporting_pb2.FeedFilter(incidents=incidents)),
        metadata=f.feed_auth(principal, "CreateExport"),
    )
    return response.export


async def wait_ready(f: Feed, principal: Principal, export_id: str) -> reporting_pb2.ExportBundle:
    async with asyncio.timeout(30):
        while True:
            got = await f.feed.GetExport(
                reporting_pb2.GetExportRequest(export_id=export_id), metadata=f.feed_auth(principal, "GetExport")
            )
            if got.export.state != reporting_pb2.EXPORT_STATE_PENDING:
                return got.export
            await asyncio.sleep(0.2)


async def download(f: Feed, principal: Principal, export_id: str, kind: int, offset: int = 0) -> bytes:
    data = b""
    async for chunk in f.feed.DownloadExport(
        reporting_pb2.DownloadExportRequest(export_id=export_id, file=kind, offset=offset),
        metadata=f.feed_auth(principal, "DownloadExport"),
    ):
        assert chunk.offset == offset + len(data)
        data += chunk.chunk
    return data


def in_tenant(tenant: str) -> reporting_pb2.IncidentFilter:
    incidents = window()
    incidents.tenant_ids.append(tenant)
    return incidents


async def test_a_bundle_holds_what_its_manifest_says_signed_and_on_the_record(
    feed: Feed, tenant: str, keys_dir: pathlib.Path
) -> None:
    beijing = await create_many(feed, tenant, 3, region_code="110105")
    await create_many(feed, tenant, 2, region_code="310101")  # outside the requester's regions
    requester = Principal(
        role=Role.REGULATOR, subject=f"reg-{uuid.uuid4().hex[:8]}", regulator_scope=CYBERSPACE_BEIJING.regulator_scope
    )
    created = await create_export(feed, requester, "handover-1", in_tenant(tenant))
    assert created.state == reporting_pb2.EXPORT_STATE_PENDING
    export = await wait_ready(feed, requester, created.export_id)
    assert export.state == reporting_pb2.EXPORT_STATE_READY, export.error
    assert export.item_count == 3

    files = {f.kind: f for f in export.files}
    contents = {kind: await download(feed, requester, export.export_id, kind) for kind in files}
    for kind, described in files.items():
        assert hashlib.sha256(contents[kind]).hexdigest() == described.sha256
        assert len(contents[kind]) == described.size_bytes

    lines = [json.loads(line) for line in contents[reporting_pb2.EXPORT_FILE_KIND_JSONL].splitlines()]
    assert sorted(d["incident_id"] for d in lines) == sorted(beijing)

    manifest_bytes = contents[reporting_pb2.EXPORT_FILE_KIND_MANIFEST]
    key_name, signature_b64 = contents[reporting_pb2.EXPORT_FILE_KIND_SIGNATURE].decode().split()
    assert key_name == export.signing_key_name
    assert base64.b64decode(signature_b64) == export.manifest_signature
    issuer, kid = key_name.split(":")
    load_trusted_keys(keys_dir)[issuer][kid].verify(export.manifest_signature, manifest_bytes)  # raises if forged

    manifest = json.loads(manifest_bytes)
    assert manifest["format"] == "avgate-export-manifest/v1"
    assert manifest["item_count"] == 3
    named = {m["name"]: m["sha256"] for m in manifest["files"]}
    assert named == {
        "incidents.jsonl": files[reporting_pb2.EXPORT_FILE_KIND_JSONL].sha256,
        "checkpoint": files[reporting_pb2.EXPORT_FILE_KIND_CHECKPOINT].sha256,
    }
    checkpoint = open_checkpoint(contents[reporting_pb2.EXPORT_FILE_KIND_CHECKPOINT], [feed.verifier])
    assert manifest["tree_head"] == {"tree_size": checkpoint.size, "root_hash": checkpoint.root_hash.hex()}
    assert manifest["ledger_entry"]["leaf_index"] < checkpoint.size  # the handover is itself in the signed tree
    assert export.tree_head.tree_size == checkpoint.size

    actions = {e["action"] for e in feed.ledger_actions("feed.export") if e["actor"]["subject"] == requester.subject}
    assert actions == {"feed.export"}
    downloads = [e for e in feed.ledger_actions("feed.export.download") if e["actor"]["subject"] == requester.subject]
    assert len(downloads) == len(files)


async def test_the_same_request_id_returns_the_same_export_and_another_filter_conflicts(
    feed: Feed, tenant: str
) -> None:
    incidents = in_tenant(tenant)
    first = await create_export(feed, OPERATOR, "again-1", incidents)
    second = await create_export(feed, OPERATOR, "again-1", incidents)
    assert second.export_id == first.export_id
    other = reporting_pb2.IncidentFilter()
    other.CopyFrom(incidents)
    other.categories.append(reporting_pb2.INCIDENT_CATEGORY_RUMOR)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create_export(feed, OPERATOR, "again-1", other)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_an_export_needs_a_closed_time_range(feed: Feed) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create_export(feed, OPERATOR, "open-1", reporting_pb2.IncidentFilter())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad_request,) = details(caught.value, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["filter.incidents.create_time_range"]


async def test_an_export_is_private_to_its_requester(feed: Feed, tenant: str) -> None:
    mine = await create_export(feed, CYBERSPACE_BEIJING, f"mine-{uuid.uuid4().hex[:6]}", in_tenant(tenant))
    someone_else = regulator(("cyberspace",), ("110000",))
    someone_else = Principal(role=Role.REGULATOR, subject="reg-other", regulator_scope=someone_else.regulator_scope)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await feed.feed.GetExport(
            reporting_pb2.GetExportRequest(export_id=mine.export_id), metadata=feed.feed_auth(someone_else, "GetExport")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_bundle_past_its_expiry_is_deleted_and_expired(feed: Feed, tenant: str) -> None:
    await create_many(feed, tenant, 1)
    created = await create_export(feed, OPERATOR, f"expiring-{uuid.uuid4().hex[:6]}", in_tenant(tenant))
    export = await wait_ready(feed, OPERATOR, created.export_id)
    directory = feed.settings.own_export_dir / export.export_id
    assert directory.is_dir()
    engine = sync_engine(feed.database.admin_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("update reporting.exports set expire_time = now() - interval '1 second' where export_id = :e"),
                {"e": export.export_id},
            )
    finally:
        engine.dispose()
    async with asyncio.timeout(15):
        while True:
            got = await feed.feed.GetExport(
                reporting_pb2.GetExportRequest(export_id=export.export_id),
                metadata=feed.feed_auth(OPERATOR, "GetExport"),
            )
            if got.export.state == reporting_pb2.EXPORT_STATE_EXPIRED:
                break
            await asyncio.sleep(0.2)
    assert not directory.exists()
    # The builder's state changes are on the record too, the manifest's hash with the first.
    (ready,) = [e for e in feed.ledger_actions("feed.export.ready") if e["subject"]["id"] == export.export_id]
    manifest = next(f for f in export.files if f.kind == reporting_pb2.EXPORT_FILE_KIND_MANIFEST)
    assert ready["data"]["manifest_sha256"] == manifest.sha256
    assert [e["subject"]["id"] for e in feed.ledger_actions("feed.export.expired")].count(export.export_id) == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await download(feed, OPERATOR, export.export_id, reporting_pb2.EXPORT_FILE_KIND_JSONL)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


class ObservedExpiry:
    """The real export store, limited to one export, that looks at that export the way a reader does
    just before and just after the builder records its expiry."""

    def __init__(self, store: SqlExportStore, service: ExportService, directory: pathlib.Path, export_id: str):
        self._store = store
        self._service = service
        self._directory = directory
        self._export_id = export_id
        self.seen: list[tuple[str, bool]] = []  # (state a reader gets, whether the bundle's folder is there)

    async def _look(self) -> None:
        export = await self._service.get(OPERATOR, self._export_id)
        self.seen.append((export.state, (self._directory / self._export_id).is_dir()))

    async def due_for_expiry(self, now: datetime) -> list[str]:
        return [e for e in await self._store.due_for_expiry(now) if e == self._export_id]

    async def expire(self, export_id: str, audit: LedgerEntry) -> bool:
        await self._look()
        expired = await self._store.expire(export_id, audit)
        await self._look()
        return expired

    async def states(self, export_ids: Collection[str]) -> dict[str, str]:
        return await self._store.states(export_ids)


class Unused:
    """Stands in for what a builder only needs to build (the tests here only expire and sweep)."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} used")


def side_builder(
    feed: Feed, keys_dir: pathlib.Path, store: Any, *, clock: Any = lambda: datetime.now(UTC)
) -> ExportBuilder:
    """A second builder on the server's export directory (as another replica's would be)."""
    return ExportBuilder(
        store,
        Unused(),  # type: ignore[arg-type]
        Unused(),  # type: ignore[arg-type]
        SigningKey("gateway", load_private_key(keys_dir / "gateway.key")),
        feed.settings.own_export_dir,
        ttl=timedelta(hours=1),
        clock=clock,
    )


def consistent(state: str, folder_there: bool) -> bool:
    """A ready export has its files; an expired one has none."""
    return folder_there if state == "ready" else not folder_there


async def test_a_reader_never_sees_an_expired_export_with_files_nor_a_ready_one_without(
    feed: Feed, tenant: str, keys_dir: pathlib.Path
) -> None:
    await create_many(feed, tenant, 1)
    created = await create_export(feed, OPERATOR, f"watched-{uuid.uuid4().hex[:6]}", in_tenant(tenant))
    export = await wait_ready(feed, OPERATOR, created.export_id)
    directory = feed.settings.own_export_dir
    # Past the export's expiry by this builder's clock, not by the server's (whose builder leaves it alone).
    later = datetime.now(UTC) + timedelta(days=30)
    engine = create_engine_for(feed.database.url_for("reporting"), pool_size=2)
    try:
        sql = SqlExportStore(engine)
        observed = ObservedExpiry(sql, ExportService(sql, directory, clock=lambda: later), directory, export.export_id)
        assert await side_builder(feed, keys_dir, observed, clock=lambda: later).expire_due() == [export.export_id]
    finally:
        await engine.dispose()
    # Just before the expiry is recorded the files are gone and a reader gets EXPIRED; just after, likewise.
    assert observed.seen == [("expired", False), ("expired", False)]
    assert all(consistent(state, there) for state, there in observed.seen)
    assert not any(p.name.startswith(f".{export.export_id}") for p in directory.iterdir())


async def test_folders_left_behind_by_a_crash_are_swept_and_bundles_in_use_are_kept(
    feed: Feed, tenant: str, keys_dir: pathlib.Path
) -> None:
    await create_many(feed, tenant, 1)
    kept = await wait_ready(
        feed,
        OPERATOR,
        (await create_export(feed, OPERATOR, f"kept-{uuid.uuid4().hex[:6]}", in_tenant(tenant))).export_id,
    )
    crashed = await wait_ready(
        feed,
        OPERATOR,
        (await create_export(feed, OPERATOR, f"crashed-{uuid.uuid4().hex[:6]}", in_tenant(tenant))).export_id,
    )
    directory = feed.settings.own_export_dir
    # A crash after the expiry was recorded but before the files went (the old order), a crash in the middle
    # of deleting, and a folder no export owns at all.
    feed.scalar("update reporting.exports set state = 'expired' where export_id = :e returning 1", e=crashed.export_id)
    assert (directory / crashed.export_id).is_dir()
    half_deleted = directory / f".{crashed.export_id}.expired"
    half_deleted.mkdir()
    unknown = directory / f"exp_{uuid.uuid4().hex}"
    unknown.mkdir()
    (unknown / "incidents.jsonl").write_bytes(b"{}\n")
    not_ours = directory / "lost+found"
    not_ours.mkdir(exist_ok=True)

    engine = create_engine_for(feed.database.url_for("reporting"), pool_size=2)
    try:
        removed = await side_builder(feed, keys_dir, SqlExportStore(engine)).sweep()
    finally:
        await engine.dispose()

    assert {crashed.export_id, half_deleted.name, unknown.name} <= set(removed)
    assert kept.export_id not in removed
    assert not (directory / crashed.export_id).exists()
    assert not half_deleted.exists()
    assert not unknown.exists()
    assert (directory / kept.export_id / "manifest.json").is_file()
    assert not_ours.is_dir()  # not a builder's folder: left alone
    assert len(await download(feed, OPERATOR, kept.export_id, reporting_pb2.EXPORT_FILE_KIND_MANIFEST)) > 0
