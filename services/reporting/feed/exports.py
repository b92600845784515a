"""Signed export bundles for offline handover to a regulator.

A regulator (or operator) asks for the incidents of a time range (with the
feed's filters); reporting records the request and its ledger entry in one
transaction, then a builder makes the bundle in the background:

- incidents.jsonl — one canonical JSON (RFC 8785) incident report per line,
  the same document the authorities receive as a delivery;
- checkpoint     — a signed tree head of the audit ledger whose tree
  already holds the export's own ledger entry, so the handover itself is
  provably on the record;
- manifest.json  — canonical JSON: format, export id, requester, filter,
  item count, each file's name, size and SHA-256, the tree head (size,
  root hash) and the export's ledger entry (id, leaf index);
- manifest.sig   — "<issuer>:<key id>" and the base64 Ed25519 signature of
  manifest.json by reporting's key (the key that signs deliveries).

A bundle holds only what its requester may see: the requester's scope is
stored with the request and applied when the bundle is built. Bundles expire
(files deleted, state EXPIRED) after the configured time. Builders take
pending exports under a lease, not a held row lock, so several replicas may
run and a long build never holds a transaction open.

Expiry deletes the files first and records EXPIRED after: a reader never sees
an EXPIRED export whose files are still there, and a ready export past its
expiry whose folder is gone reads as EXPIRED (the builder is between the two
steps, or stopped there). A crash can still leave a folder behind, so the
builder also sweeps the directory now and then: a folder that no ready export
owns (nor a pending one being built) is removed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import pathlib
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, Protocol

from avgate.kernel.canonical import canonical_json
from avgate.kernel.errors import (
    FailedPrecondition,
    FieldChecker,
    FieldViolation,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
)
from avgate.kernel.keys import SigningKey
from avgate.kernel.principal import Principal, Role
from avgate.ledger.entry import LedgerEntry
from services.reporting.feed.service import ACCESS_BASIS, FeedRequest
from services.reporting.incidents.domain import (
    IncidentCategory,
    IncidentFilter,
    IncidentSource,
    IncidentStatus,
    report_bytes,
)
from services.reporting.incidents.service import check_filter, scoped_query
from services.reporting.incidents.store import IncidentStore
from services.reporting.ledger.store import Head

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "avgate-export-manifest/v1"
CHUNK = 1 << 20
FILE_NAMES = {
    "jsonl": "incidents.jsonl",
    "manifest": "manifest.json",
    "checkpoint": "checkpoint",
    "signature": "manifest.sig",
}


@dataclass(frozen=True)
class ExportFile:
    kind: str  # a key of FILE_NAMES
    name: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Export:
    export_id: str
    requested_by: str
    request_id: str
    request: FeedRequest
    state: str  # pending | ready | failed | expired
    ledger_entry_id: uuid.UUID
    create_time: datetime
    item_count: int = 0
    files: tuple[ExportFile, ...] = ()
    manifest_signature: bytes = b""
    signing_key_name: str = ""
    checkpoint: bytes = b""
    tree_size: int = 0
    error: str = ""
    complete_time: datetime | None = None
    expire_time: datetime | None = None
    principal: dict[str, Any] = field(default_factory=dict)

    def file(self, kind: str) -> ExportFile | None:
        return next((f for f in self.files if f.kind == kind), None)


# --------------------------------------------------------------------------- filter ⇄ JSON


def filter_document(request: FeedRequest) -> dict[str, Any]:
    f = request.incidents
    return {
        "categories": [c.value for c in f.categories],
        "departments": list(f.departments),
        "region_codes": list(f.region_codes),
        "tenant_ids": list(f.tenant_ids),
        "statuses": [s.value for s in f.statuses],
        "sources": [s.value for s in f.sources],
        "created_from": f.created_from.isoformat() if f.created_from else None,
        "created_before": f.created_before.isoformat() if f.created_before else None,
        "exclude_tree_heads": request.exclude_tree_heads,
    }


def filter_from_document(document: dict[str, Any]) -> FeedRequest:
    return FeedRequest(
        incidents=IncidentFilter(
            categories=tuple(IncidentCategory(c) for c in document["categories"]),
            departments=tuple(document["departments"]),
            region_codes=tuple(document["region_codes"]),
            tenant_ids=tuple(document["tenant_ids"]),
            statuses=tuple(IncidentStatus(s) for s in document["statuses"]),
            sources=tuple(IncidentSource(s) for s in document["sources"]),
            created_from=datetime.fromisoformat(document["created_from"]) if document["created_from"] else None,
            created_before=datetime.fromisoformat(document["created_before"]) if document["created_before"] else None,
        ),
        exclude_tree_heads=bool(document.get("exclude_tree_heads", False)),
    )


def request_hash(request: FeedRequest) -> bytes:
    return hashlib.sha256(canonical_json(filter_document(request))).digest()


# --------------------------------------------------------------------------- ports


class ExportStore(Protocol):
    async def create(self, export: Export, digest: bytes, audit: LedgerEntry) -> tuple[Export, bytes]:
        """Writes the export with its ledger entry, or returns the one with the same requester and request id
        together with that one's request hash."""
        ...

    async def get(self, export_id: str) -> Export | None: ...

    async def lease_pending(self, lease: timedelta) -> Export | None:
        """One pending export whose lease is free, leased to the caller."""
        ...

    async def finish(self, export: Export, audit: LedgerEntry) -> None:
        """Stores a built (ready or failed) export with its ledger entry and ends its lease."""
        ...

    async def release(self, export_id: str) -> None:
        """Ends a lease without a result (the build waits for the ledger)."""
        ...

    async def due_for_expiry(self, now: datetime) -> list[str]:
        """The ids of ready exports past their expiry."""
        ...

    async def expire(self, export_id: str, audit: LedgerEntry) -> bool:
        """Marks a ready export expired with its ledger entry; False when it was not ready (already expired)."""
        ...

    async def states(self, export_ids: Collection[str]) -> dict[str, str]:
        """The state of each of these exports that exists."""
        ...

    async def record(self, audit: LedgerEntry) -> None: ...


class LedgerHeads(Protocol):
    async def latest_head(self) -> Head | None: ...

    async def leaf_index_of(self, entry_id: uuid.UUID) -> int | None: ...


def _now() -> datetime:
    return datetime.now(UTC)


def _is_requester(caller: Principal, export: Export) -> bool:
    effective = caller.effective
    return effective.role is Role.OPERATOR or (
        effective.subject == export.requested_by and effective.role.value == export.principal.get("role")
    )


# --------------------------------------------------------------------------- use cases


class ExportService:
    def __init__(self, store: ExportStore, directory: pathlib.Path, *, clock: Callable[[], datetime] = _now):
        self._store = store
        self._directory = directory
        self._clock = clock

    async def create(self, caller: Principal, request_id: str, request: FeedRequest) -> Export:
        caller.require_role(Role.REGULATOR, Role.OPERATOR)
        check = FieldChecker()
        check.require(
            0 < len(request_id) <= 128 and request_id.isprintable(),
            "request_id",
            "must be 1 to 128 printable characters",
        )
        check_filter(check, request.incidents, "filter.incidents.")
        f = request.incidents
        check.require(
            f.created_from is not None and f.created_before is not None,
            "filter.incidents.create_time_range",
            "an export needs a closed time range (start_time and end_time)",
        )
        check.raise_if_any()
        effective = caller.effective
        entry_id = uuid.uuid4()
        export = Export(
            export_id=f"exp_{uuid.uuid4().hex}",
            requested_by=effective.subject,
            request_id=request_id,
            request=request,
            state="pending",
            ledger_entry_id=entry_id,
            create_time=self._clock(),
            principal=effective.to_claims(),
        )
        audit = LedgerEntry(
            action="feed.export",
            subject_type="export",
            subject_id=export.export_id,
            actor=caller,
            legal_basis=ACCESS_BASIS,
            tenant_id="",
            data={"request_id": request_id, "filter_sha256": request_hash(request).hex()},
            idempotency_key=f"feed.export:{effective.subject}:{request_id}",
            entry_id=entry_id,
            occurred_at=export.create_time,
        )
        stored, digest = await self._store.create(export, request_hash(request), audit)
        if digest != request_hash(request):
            raise IdempotencyConflict("export", request_id, f"export request {request_id!r} exists with another filter")
        return stored

    async def get(self, caller: Principal, export_id: str) -> Export:
        caller.require_role(Role.REGULATOR, Role.OPERATOR)
        if not export_id:
            raise InvalidArgument(FieldViolation("export_id", "must be set"))
        export = await self._store.get(export_id)
        if export is None or not _is_requester(caller, export):
            raise NotFound("export", export_id)
        if (
            export.state == "ready"
            and export.expire_time is not None
            and export.expire_time <= self._clock()
            and not (self._directory / export_id).is_dir()
        ):
            # The builder deleted the files and has yet to record it: what the caller gets is an expired export.
            return replace(export, state="expired")
        return export

    async def download(
        self, caller: Principal, export_id: str, kind: str | None, offset: int
    ) -> AsyncIterator[tuple[int, bytes]]:
        """(offset, chunk) pairs of one file of a ready export, from `offset`; the call is ledgered."""
        check = FieldChecker()
        check.require(kind in FILE_NAMES, "file", "must name a file of the bundle")
        check.require(offset >= 0, "offset", "must not be negative")
        check.raise_if_any()
        assert kind is not None
        export = await self.get(caller, export_id)
        if export.state != "ready":
            raise FailedPrecondition(f"export {export_id!r} is {export.state}, not ready")
        described = export.file(kind)
        assert described is not None
        check.require(offset <= described.size_bytes, "offset", f"must be at most the file size {described.size_bytes}")
        check.raise_if_any()
        path = self._directory / export_id / described.name
        await self._store.record(
            LedgerEntry(
                action="feed.export.download",
                subject_type="export",
                subject_id=export_id,
                actor=caller,
                legal_basis=ACCESS_BASIS,
                tenant_id="",
                data={"file": described.name, "sha256": described.sha256, "offset": offset},
            )
        )
        return _chunks(path, offset)


async def _chunks(path: pathlib.Path, offset: int) -> AsyncIterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        fh.seek(offset)
        while chunk := await asyncio.to_thread(fh.read, CHUNK):
            yield offset, chunk
            offset += len(chunk)


# --------------------------------------------------------------------------- the builder


class ExportBuilder:
    """Builds pending exports into signed bundles; expires old ones. One background job per reporting replica."""

    def __init__(
        self,
        store: ExportStore,
        incidents: IncidentStore,
        heads: LedgerHeads,
        signer: SigningKey,
        directory: pathlib.Path,
        *,
        ttl: timedelta,
        lease: timedelta = timedelta(minutes=10),
        poll_interval: float = 1.0,
        sweep_interval: timedelta = timedelta(minutes=10),
        clock: Callable[[], datetime] = _now,
    ):
        self._store = store
        self._incidents = incidents
        self._heads = heads
        self._signer = signer
        self._directory = directory
        self._ttl = ttl
        self._lease = lease
        self._poll = poll_interval
        self._sweep_interval = sweep_interval
        self._next_sweep: datetime | None = None
        self._clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.step()
            except Exception:
                log.exception("export builder: a step failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll)

    async def step(self) -> bool:
        """Expires due bundles, sweeps left-over folders when a sweep is due, and builds one pending export
        if it can; whether one became ready or failed."""
        await self.expire_due()
        now = self._clock()
        if self._next_sweep is None or now >= self._next_sweep:
            await self.sweep()
            self._next_sweep = now + self._sweep_interval
        export = await self._store.lease_pending(self._lease)
        if export is None:
            return False
        leaf = await self._heads.leaf_index_of(export.ledger_entry_id)
        head = await self._heads.latest_head()
        if leaf is None or head is None or head.tree_size <= leaf:
            await self._store.release(export.export_id)  # the ledger has not signed the request yet
            return False
        try:
            built = await self._build(export, leaf, head)
        except Exception as exc:
            log.exception("export builder: export %s failed", export.export_id)
            built = replace(export, state="failed", error=f"{type(exc).__name__}: {exc}", complete_time=self._clock())
        data: dict[str, object] = {"item_count": built.item_count}
        if built.state == "ready":
            manifest = built.file("manifest")
            assert manifest is not None
            data |= {"manifest_sha256": manifest.sha256, "tree_size": built.tree_size}
        else:
            data["error"] = built.error.partition(":")[0]  # the kind of failure only: messages stay in the log
        await self._store.finish(built, _builder_entry(built.state, built.export_id, self._clock(), data))
        return True

    async def expire_due(self) -> list[str]:
        """Deletes the files of every ready export past its expiry, then records it expired; the ids expired.

        In this order a reader never sees EXPIRED while the files are there. The folder is first renamed
        out of the way (one atomic step), so a ready export has all its files or no folder at all.
        """
        now = self._clock()
        expired = []
        for export_id in await self._store.due_for_expiry(now):
            await asyncio.to_thread(self._remove_bundle, export_id)
            if await self._store.expire(export_id, _builder_entry("expired", export_id, now)):
                expired.append(export_id)
        return expired

    def _remove_bundle(self, export_id: str) -> None:
        final = self._directory / export_id
        doomed = self._directory / f".{export_id}.expired"
        with contextlib.suppress(FileNotFoundError):
            final.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    async def sweep(self) -> list[str]:
        """Removes the folders no export owns any more (a crash between deleting and recording, a build that
        died); the names removed. A ready export owns its bundle's folder, a pending one its build's folders."""
        names = await asyncio.to_thread(_bundle_folders, self._directory)
        # Listed before the states are read: a folder made after the listing is not looked at.
        states = await self._store.states({export_id for export_id in names.values()})
        removed = []
        for name, export_id in sorted(names.items()):
            state = states.get(export_id)
            if state == "pending" or (state == "ready" and name == export_id):
                continue
            log.warning("export builder: removing %s, left behind (export %s)", name, state or "unknown")
            await asyncio.to_thread(shutil.rmtree, self._directory / name, True)
            removed.append(name)
        return removed

    async def _build(self, export: Export, leaf: int, head: Head) -> Export:
        final = self._directory / export.export_id
        work = self._directory / f".{export.export_id}.{uuid.uuid4().hex[:8]}"
        private_directory(work)
        try:
            count = await self._write_incidents(export, work / FILE_NAMES["jsonl"])
            write_private(work / FILE_NAMES["checkpoint"], head.checkpoint)
            files = [_describe("jsonl", work), _describe("checkpoint", work)]
            complete = self._clock()
            manifest = canonical_json(
                {
                    "format": MANIFEST_FORMAT,
                    "export_id": export.export_id,
                    "requested_by": export.requested_by,
                    "filter": filter_document(export.request),
                    "item_count": count,
                    "files": [{"name": f.name, "sha256": f.sha256, "size_bytes": f.size_bytes} for f in files],
                    "tree_head": {"tree_size": head.tree_size, "root_hash": head.root_hash.hex()},
                    "ledger_entry": {"id": str(export.ledger_entry_id), "leaf_index": leaf},
                    "create_time": export.create_time.isoformat(),
                    "complete_time": complete.isoformat(),
                }
            )
            signature = self._signer.private_key.sign(manifest)
            key_name = f"{self._signer.issuer}:{self._signer.kid}"
            write_private(work / FILE_NAMES["manifest"], manifest)
            write_private(
                work / FILE_NAMES["signature"], f"{key_name}\n{base64.b64encode(signature).decode()}\n".encode()
            )
            files += [_describe("manifest", work), _describe("signature", work)]
            for path in work.iterdir():
                with path.open("rb") as fh:
                    os.fsync(fh.fileno())
            if final.exists():  # a build that lost its lease after writing: replace it
                shutil.rmtree(final)
            work.rename(final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return replace(
            export,
            state="ready",
            item_count=count,
            files=tuple(files),
            manifest_signature=signature,
            signing_key_name=key_name,
            checkpoint=head.checkpoint,
            tree_size=head.tree_size,
            complete_time=complete,
            expire_time=complete + self._ttl,
        )

    async def _write_incidents(self, export: Export, path: pathlib.Path) -> int:
        principal = Principal.from_claims(export.principal, request_id=f"export:{export.export_id}")
        query = scoped_query(principal, export.request.incidents)
        count = 0
        with create_private(path) as out:
            if query is None:
                return 0
            after = None
            while True:
                page = await self._incidents.list(query, after=after, limit=500)
                for incident in page:
                    out.write(report_bytes(incident) + b"\n")
                count += len(page)
                if len(page) < 500:
                    return count
                after = (page[-1].create_time, page[-1].incident_id)


_BUILDER = Principal(role=Role.SERVICE, subject="reporting")


def _builder_entry(state: str, export_id: str, when: datetime, data: dict[str, object] | None = None) -> LedgerEntry:
    """The ledger entry of an export's state change made by the builder (ready, failed, expired)."""
    return LedgerEntry(
        action=f"feed.export.{state}",
        subject_type="export",
        subject_id=export_id,
        actor=_BUILDER,
        legal_basis=ACCESS_BASIS,
        tenant_id="",
        data=data or {},
        occurred_at=when,
    )


_FOLDER = re.compile(r"\.?(exp_[0-9a-f]{32})(\.[0-9a-z]+)?")


def _bundle_folders(directory: pathlib.Path) -> dict[str, str]:
    """The folders a builder made under `directory` (bundles, builds, bundles being deleted): name → export id."""
    if not directory.is_dir():
        return {}
    found = {}
    for path in directory.iterdir():
        match = _FOLDER.fullmatch(path.name)
        if match and path.is_dir():
            found[path.name] = match.group(1)
    return found


def private_directory(path: pathlib.Path) -> None:
    """Makes `path` a new directory only its owner may enter (0700, whatever the umask); a missing
    export directory above it is made 0700 as well (one that exists keeps the mode it was given). A
    bundle holds incident reports: no other account on the machine may read them."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def create_private(path: pathlib.Path) -> BinaryIO:
    """A new file open for writing, 0600 before any byte is in it, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # os.open's mode is filtered by the umask
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "wb")


def write_private(path: pathlib.Path, data: bytes) -> None:
    with create_private(path) as out:
        out.write(data)


def _describe(kind: str, directory: pathlib.Path) -> ExportFile:
    path = directory / FILE_NAMES[kind]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return ExportFile(kind, path.name, digest.hexdigest(), path.stat().st_size)
