"""Evidence use cases: attach (streamed), get, read (streamed), hold, lift, release.

Who may do what:
- Attach: providers to their own tenant's incidents (another avgate service
  calling on a provider's behalf acts for that provider), operators to any
  incident. The evidence belongs to the incident's tenant.
- Metadata (get): the owning provider, regulators whose departments and
  regions cover an incident the evidence is attached to, operators.
- Bytes (read): regulators in scope and operators only; providers already
  hold what they uploaded. Every read call is one ledger entry (not one per
  chunk), written before the first byte is sent.
- Hold: operators, and regulators in scope (a regulator investigating must be
  able to keep what it investigates, as a preservation request does).
- Lift: operators, and a regulator for a hold it placed itself.
- Release: operators only, once the preservation period is over and no hold
  is active (else FAILED_PRECONDITION saying why).
- Evidence outside the caller's reach is NOT_FOUND; a role that may never do
  something is PERMISSION_DENIED.

An upload is sealed (services.reporting.evidence.crypto) and streamed to a new
object as it arrives, then checked against the declared size and SHA-256;
only then is it recorded. A mismatch, an out-of-order stream, a chunk over
1 MiB or more bytes than declared is INVALID_ARGUMENT (the last two as soon
as they arrive) and stores nothing. Identical bytes within a tenant are
stored once: a second upload is verified in full, then linked to the
evidence already there (which keeps its file name and description, and is
preserved until the later of the two periods). Retrying with the same
request id returns the same evidence without sending the bytes again.

Released evidence keeps its record and hash; ReadEvidence on it is
FAILED_PRECONDITION: the evidence exists, its bytes do not.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from avgate.kernel.errors import (
    DependencyUnavailable,
    FailedPrecondition,
    FieldChecker,
    FieldViolation,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from avgate.kernel.legal import ART_12_14
from avgate.kernel.principal import Principal, Role
from avgate.ledger.entry import LedgerEntry
from services.reporting.access import SUPERVISION
from services.reporting.domain import SHA256_HEX
from services.reporting.evidence.blobs import BlobNotFound, BlobStore
from services.reporting.evidence.crypto import (
    HEADER,
    SEGMENT_SIZE,
    CorruptObject,
    Header,
    KeyRing,
    decrypt_segments,
    encrypt_stream,
    new_data_key,
)
from services.reporting.evidence.domain import (
    MAX_CHUNK,
    Attachment,
    AttachPlan,
    Evidence,
    EvidenceChange,
    EvidenceHold,
    EvidenceView,
    LiftHold,
    PlaceHold,
    Release,
    RequestIdTaken,
    StalePlan,
    UploadMetadata,
    hold_fingerprint,
    may_see,
    new_blob_name,
    new_evidence_id,
    new_hold_id,
    view,
)
from services.reporting.evidence.store import EvidenceStore
from services.reporting.incidents.domain import Incident
from services.reporting.incidents.store import IncidentStore

log = logging.getLogger(__name__)

DEFAULT_RETENTION = timedelta(days=365)
MIN_RETENTION = timedelta(days=1)
DEFAULT_MAX_BYTES = 20 * 1024**3
MAX_REASON = 500
MAX_FILE_NAME = 255
MAX_DESCRIPTION = 2000
LEGAL_BASIS = ART_12_14
READ_BASIS = SUPERVISION
MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")

UploadPart = UploadMetadata | bytes


def _now() -> datetime:
    return datetime.now(UTC)


class EvidenceLost(Exception):
    """The record says the bytes are kept, but the blob store has no object (an operator must look)."""


@dataclass
class _Received:
    """What has arrived of an upload: counted and hashed as it streams."""

    declared: UploadMetadata
    size: int = 0

    def __post_init__(self) -> None:
        self._hash = hashlib.sha256()

    async def chunks(self, parts: AsyncIterator[UploadPart]) -> AsyncIterator[bytes]:
        async for part in parts:
            if isinstance(part, UploadMetadata):
                raise InvalidArgument(FieldViolation("metadata", "only the first message carries metadata"))
            if len(part) > MAX_CHUNK:
                raise InvalidArgument(FieldViolation("chunk", f"at most {MAX_CHUNK} bytes per message"))
            self.size += len(part)
            if self.size > self.declared.size_bytes:
                raise InvalidArgument(
                    FieldViolation(
                        "metadata.size_bytes",
                        f"declared {self.declared.size_bytes} bytes; more arrived",
                    )
                )
            self._hash.update(part)
            yield part

    def verify(self) -> None:
        check = FieldChecker()
        check.require(
            self.size == self.declared.size_bytes,
            "metadata.size_bytes",
            f"declared {self.declared.size_bytes} bytes; {self.size} arrived",
        )
        check.require(
            self.size != self.declared.size_bytes or self._hash.hexdigest() == self.declared.sha256,
            "metadata.sha256",
            "does not match the bytes that arrived",
        )
        check.raise_if_any()


class EvidenceService:
    def __init__(
        self,
        store: EvidenceStore,
        incidents: IncidentStore,
        blobs: BlobStore,
        keys: KeyRing,
        *,
        retention: timedelta = DEFAULT_RETENTION,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_size: int = SEGMENT_SIZE,
        clock: Callable[[], datetime] = _now,
    ):
        if retention < MIN_RETENTION:
            raise ValueError(f"the preservation period must be at least {MIN_RETENTION}")
        self._store = store
        self._incidents = incidents
        self._blobs = blobs
        self._keys = keys
        self._retention = retention
        self._max_bytes = max_bytes
        self._segment_size = segment_size
        self._clock = clock

    # ----------------------------------------------------------------------- attach

    async def attach(self, caller: Principal, parts: AsyncIterable[UploadPart]) -> EvidenceView:
        """Stores an upload (metadata, then chunks) and attaches it to the metadata's incident."""
        caller.require_role(Role.PROVIDER, Role.OPERATOR)
        stream = aiter(parts)
        first = await anext(stream, None)
        if not isinstance(first, UploadMetadata):
            raise InvalidArgument(FieldViolation("metadata", "an upload starts with its metadata, then the chunks"))
        metadata = self._validate(first)
        incident = await self._incidents.get(metadata.incident_id)
        if incident is None or not _may_attach_to(caller, incident):
            raise NotFound("incident", metadata.incident_id)
        fingerprint = metadata.fingerprint()
        earlier = await self._store.find_attachment(incident.tenant_id, metadata.request_id)
        if earlier is not None:
            return await self._retried(caller, earlier, fingerprint)

        blob = new_blob_name()
        data_key = new_data_key()
        received = _Received(metadata)
        try:
            await self._blobs.write(
                blob, encrypt_stream(data_key, received.chunks(stream), segment_size=self._segment_size)
            )
            received.verify()
            stored = await self._record(caller, metadata, incident, fingerprint, blob, data_key)
        except BaseException:
            # Nothing stored: no object without its record (the write removes its own partial object).
            await self._blobs.destroy(blob)
            raise
        if stored.evidence.blob_name != blob:
            await self._blobs.destroy(blob)  # identical bytes were there already
        return stored

    async def _record(
        self,
        caller: Principal,
        metadata: UploadMetadata,
        incident: Incident,
        fingerprint: bytes,
        blob: str,
        data_key: bytes,
    ) -> EvidenceView:
        tenant = incident.tenant_id
        # Two rounds: a concurrent upload of the same bytes (or a release) makes the first plan stale.
        for _ in range(2):
            live = await self._store.find_live(tenant, metadata.sha256)
            now = self._clock()
            entry_id = uuid.uuid4()
            evidence_id = live.evidence_id if live is not None else new_evidence_id()
            attachment = Attachment(
                tenant_id=tenant,
                request_id=metadata.request_id,
                evidence_id=evidence_id,
                incident_id=incident.incident_id,
                request_hash=fingerprint,
                attached_by=caller.effective.subject,
                attach_time=now,
                ledger_entry_id=entry_id,
            )
            new = None
            if live is None:
                new = Evidence(
                    evidence_id=evidence_id,
                    tenant_id=tenant,
                    sha256=metadata.sha256,
                    size_bytes=metadata.size_bytes,
                    media_type=metadata.media_type,
                    file_name=metadata.file_name,
                    description=metadata.description,
                    retain_until=now + self._retention,
                    attached_by=caller.effective.subject,
                    create_time=now,
                    blob_name=blob,
                    sealed_key=self._keys.wrap(data_key, blob),
                    ledger_entry_id=entry_id,
                )
            audit = LedgerEntry(
                action="evidence.attach",
                subject_type="evidence",
                subject_id=evidence_id,
                actor=caller,
                legal_basis=LEGAL_BASIS,
                tenant_id=tenant,
                data={
                    "incident_id": incident.incident_id,
                    "request_id": metadata.request_id,
                    "sha256": metadata.sha256,
                    "size_bytes": metadata.size_bytes,
                    "media_type": metadata.media_type,
                    "deduplicated": live is not None,
                    "retain_until": _iso(now + self._retention),
                    "kek_id": self._keys.current_id if live is None else "",
                },
                idempotency_key=f"evidence.attach:{tenant}:{metadata.request_id}",
                entry_id=entry_id,
                occurred_at=now,
            )
            try:
                stored = await self._store.attach(AttachPlan(attachment, audit, now + self._retention, new))
            except StalePlan:
                continue
            except RequestIdTaken:
                # A concurrent retry of this very upload won: answer as a retry would.
                taken = await self._store.find_attachment(tenant, metadata.request_id)
                assert taken is not None
                return await self._retried(caller, taken, fingerprint)
            return view(caller, stored, now)
        raise DependencyUnavailable("evidence store", message="concurrent uploads of the same bytes; retry")

    async def _retried(self, caller: Principal, earlier: Attachment, fingerprint: bytes) -> EvidenceView:
        if earlier.request_hash != fingerprint:
            raise IdempotencyConflict(
                "evidence upload",
                earlier.request_id,
                f"request_id {earlier.request_id!r} was used for a different upload",
            )
        stored = await self._store.get(earlier.evidence_id)
        assert stored is not None
        return view(caller, stored, self._clock())

    def _validate(self, metadata: UploadMetadata) -> UploadMetadata:
        check = FieldChecker()
        check.identifier(metadata.request_id, "metadata.request_id", max_length=128)
        check.require(bool(metadata.incident_id), "metadata.incident_id", "must be set")
        media_type = metadata.media_type.lower()
        check.require(
            bool(MEDIA_TYPE.fullmatch(media_type)), "metadata.media_type", "must be a MIME type (type/subtype)"
        )
        check.require(
            0 <= metadata.size_bytes <= self._max_bytes,
            "metadata.size_bytes",
            f"must be 0 to {self._max_bytes} bytes",
        )
        check.require(
            bool(SHA256_HEX.fullmatch(metadata.sha256)), "metadata.sha256", "must be 64 lower-case hex digits"
        )
        check.text(metadata.file_name, "metadata.file_name", required=False, max_length=MAX_FILE_NAME)
        if metadata.file_name and not metadata.file_name.isprintable():
            check.add("metadata.file_name", "must be printable characters")
        check.text(metadata.description, "metadata.description", required=False, max_length=MAX_DESCRIPTION)
        check.raise_if_any()
        return UploadMetadata(
            request_id=metadata.request_id,
            incident_id=metadata.incident_id,
            media_type=media_type,
            size_bytes=metadata.size_bytes,
            sha256=metadata.sha256,
            file_name=metadata.file_name,
            description=metadata.description,
        )

    # ----------------------------------------------------------------------- get and read

    async def get(self, caller: Principal, evidence_id: str) -> EvidenceView:
        caller.require_role(Role.PROVIDER, Role.REGULATOR, Role.OPERATOR)
        evidence = await self._visible(caller, evidence_id)
        if caller.effective.role is Role.REGULATOR:
            await self._store.record(
                LedgerEntry(
                    action="evidence.get",
                    subject_type="evidence",
                    subject_id=evidence_id,
                    actor=caller,
                    legal_basis=READ_BASIS,
                    tenant_id=evidence.tenant_id,
                )
            )
        return view(caller, evidence, self._clock())

    async def read(
        self, caller: Principal, evidence_id: str, offset: int
    ) -> tuple[EvidenceView, AsyncIterator[tuple[int, bytes]]]:
        """The evidence and its bytes from `offset` as (offset, chunk ≤ 1 MiB) pairs; the read is ledgered first."""
        caller.require_role(Role.REGULATOR, Role.OPERATOR)
        if offset < 0:
            raise InvalidArgument(FieldViolation("offset", "must not be negative"))
        evidence = await self._visible(caller, evidence_id)
        if evidence.release_time is not None or evidence.sealed_key is None:
            raise FailedPrecondition(
                f"evidence {evidence_id} was released at {_iso(evidence.release_time)}; its bytes are destroyed",
                metadata={"state": "EVIDENCE_STATE_RELEASED"},
            )
        if offset > evidence.size_bytes:
            raise InvalidArgument(FieldViolation("offset", f"must be at most the size, {evidence.size_bytes}"))
        now = self._clock()
        await self._store.record(
            LedgerEntry(
                action="evidence.read",
                subject_type="evidence",
                subject_id=evidence_id,
                actor=caller,
                legal_basis=READ_BASIS,
                tenant_id=evidence.tenant_id,
                data={"offset": offset, "sha256": evidence.sha256, "size_bytes": evidence.size_bytes},
                occurred_at=now,
            )
        )
        data_key = self._keys.unwrap(evidence.sealed_key, evidence.blob_name)
        return view(caller, evidence, now), self._plaintext(evidence, data_key, offset)

    async def _plaintext(
        self, evidence: Evidence, data_key: bytes, offset: int
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        if offset == evidence.size_bytes:
            return
        try:
            header = Header.parse(await self._head(evidence.blob_name))
            index = offset // header.segment_size
            skip = offset - index * header.segment_size
            position = offset
            ciphertext = await self._blobs.open(evidence.blob_name, header.segment_offset(index))
            async with (
                contextlib.aclosing(ciphertext),
                contextlib.aclosing(decrypt_segments(data_key, header, ciphertext, index)) as segments,
            ):
                async for segment in segments:
                    piece = memoryview(segment)[skip:]
                    skip = 0
                    for start in range(0, len(piece), MAX_CHUNK):
                        chunk = bytes(piece[start : start + MAX_CHUNK])
                        yield position, chunk
                        position += len(chunk)
            if position != evidence.size_bytes:
                raise CorruptObject(f"the object holds {position} bytes; its record says {evidence.size_bytes}")
        except BlobNotFound as exc:
            current = await self._store.get(evidence.evidence_id)
            if current is not None and current.release_time is not None:
                raise FailedPrecondition(
                    f"evidence {evidence.evidence_id} was released while it was read",
                    metadata={"state": "EVIDENCE_STATE_RELEASED"},
                ) from exc
            log.error("evidence object missing", extra={"evidence_id": evidence.evidence_id})
            raise EvidenceLost(f"evidence {evidence.evidence_id}: its object is missing") from exc
        except CorruptObject:
            log.error("evidence object does not authenticate", extra={"evidence_id": evidence.evidence_id})
            raise

    async def _head(self, blob: str) -> bytes:
        head = bytearray()
        stream = await self._blobs.open(blob, 0)
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                head += chunk
                if len(head) >= HEADER.size:
                    break
        return bytes(head[: HEADER.size])

    async def _visible(self, caller: Principal, evidence_id: str) -> Evidence:
        if not evidence_id:
            raise InvalidArgument(FieldViolation("evidence_id", "must be set"))
        evidence = await self._store.get(evidence_id)
        if evidence is None or not may_see(caller, evidence):
            raise NotFound("evidence", evidence_id)
        return evidence

    # ----------------------------------------------------------------------- holds and release

    async def hold(
        self, caller: Principal, evidence_id: str, *, request_id: str, reason: str, until_time: datetime | None
    ) -> tuple[EvidenceView, EvidenceHold]:
        """Places a hold, or returns the one this caller placed with the same request id."""
        caller.require_role(Role.OPERATOR, Role.REGULATOR)
        now = self._clock()
        check = FieldChecker()
        check.require(bool(evidence_id), "evidence_id", "must be set")
        check.identifier(request_id, "request_id", max_length=128)
        check.text(reason, "reason", required=True, max_length=MAX_REASON)
        check.require(until_time is None or until_time > now, "until_time", "must be in the future")
        check.raise_if_any()
        placer = caller.effective
        fingerprint = hold_fingerprint(reason, until_time)
        new_hold = EvidenceHold(
            hold_id=new_hold_id(),
            evidence_id=evidence_id,
            request_id=request_id,
            request_hash=fingerprint,
            reason=reason,
            placed_by=placer.subject,
            placed_by_role=placer.role,
            create_time=now,
            until_time=until_time,
        )

        def decide(evidence: Evidence) -> EvidenceChange | None:
            if not may_see(caller, evidence):
                raise NotFound("evidence", evidence_id)
            earlier = _hold_by_request(evidence, placer.subject, request_id)
            if earlier is not None:
                if earlier.request_hash != fingerprint:
                    raise IdempotencyConflict(
                        "evidence hold", request_id, f"request_id {request_id!r} placed a different hold"
                    )
                return None
            if evidence.release_time is not None:
                raise FailedPrecondition(
                    f"evidence {evidence_id} was released; nothing is left to hold",
                    metadata={"state": "EVIDENCE_STATE_RELEASED"},
                )
            audit = LedgerEntry(
                action="evidence.hold",
                subject_type="evidence",
                subject_id=evidence_id,
                actor=caller,
                legal_basis=LEGAL_BASIS,
                reason=reason,
                tenant_id=evidence.tenant_id,
                data={
                    "hold_id": new_hold.hold_id,
                    "request_id": request_id,
                    "until_time": _iso(until_time) if until_time else None,
                },
                idempotency_key=f"evidence.hold:{evidence_id}:{placer.subject}:{request_id}",
                occurred_at=now,
            )
            return PlaceHold(new_hold, audit)

        evidence = await self._store.change(evidence_id, decide)
        if evidence is None:
            raise NotFound("evidence", evidence_id)
        hold = _hold_by_request(evidence, placer.subject, request_id)
        assert hold is not None
        return view(caller, evidence, now), hold

    async def lift(self, caller: Principal, evidence_id: str, hold_id: str, *, reason: str) -> EvidenceView:
        """Lifts a hold; lifting a lifted hold changes nothing."""
        caller.require_role(Role.OPERATOR, Role.REGULATOR)
        check = FieldChecker()
        check.require(bool(evidence_id), "evidence_id", "must be set")
        check.require(bool(hold_id), "hold_id", "must be set")
        check.text(reason, "reason", required=True, max_length=MAX_REASON)
        check.raise_if_any()
        now = self._clock()
        lifter = caller.effective

        def decide(evidence: Evidence) -> EvidenceChange | None:
            if not may_see(caller, evidence):
                raise NotFound("evidence", evidence_id)
            hold = next((h for h in evidence.holds if h.hold_id == hold_id), None)
            if hold is None:
                raise NotFound("evidence hold", hold_id)
            if lifter.role is Role.REGULATOR and not (
                hold.placed_by_role is Role.REGULATOR and hold.placed_by == lifter.subject
            ):
                raise PermissionDenied("a regulator lifts only the holds it placed; an operator lifts the others")
            if hold.lift_time is not None:
                return None
            audit = LedgerEntry(
                action="evidence.hold_lift",
                subject_type="evidence",
                subject_id=evidence_id,
                actor=caller,
                legal_basis=LEGAL_BASIS,
                reason=reason,
                tenant_id=evidence.tenant_id,
                data={"hold_id": hold_id},
                idempotency_key=f"evidence.hold_lift:{hold_id}",
                occurred_at=now,
            )
            return LiftHold(hold_id, now, reason, lifter.subject, audit)

        evidence = await self._store.change(evidence_id, decide)
        if evidence is None:
            raise NotFound("evidence", evidence_id)
        return view(caller, evidence, now)

    async def release(self, caller: Principal, evidence_id: str, *, reason: str) -> EvidenceView:
        """Destroys the bytes (data key first, in the transaction; then the object); the record stays.

        Releasing released evidence returns it as it is.
        """
        caller.require_role(Role.OPERATOR)
        check = FieldChecker()
        check.require(bool(evidence_id), "evidence_id", "must be set")
        check.text(reason, "reason", required=True, max_length=MAX_REASON)
        check.raise_if_any()
        now = self._clock()

        def decide(evidence: Evidence) -> EvidenceChange | None:
            if evidence.release_time is not None:
                return None
            blockers = evidence.release_blockers(now)
            if blockers:
                raise FailedPrecondition(
                    f"evidence {evidence_id} cannot be released yet: {'; '.join(blockers)}",
                    metadata={"state": f"EVIDENCE_STATE_{evidence.state(now).name}"},
                )
            audit = LedgerEntry(
                action="evidence.release",
                subject_type="evidence",
                subject_id=evidence_id,
                actor=caller,
                legal_basis=LEGAL_BASIS,
                reason=reason,
                tenant_id=evidence.tenant_id,
                data={"sha256": evidence.sha256, "size_bytes": evidence.size_bytes},
                idempotency_key=f"evidence.release:{evidence_id}",
                occurred_at=now,
            )
            return Release(now, reason, caller.effective.subject, audit)

        evidence = await self._store.change(evidence_id, decide)
        if evidence is None:
            raise NotFound("evidence", evidence_id)
        # After the commit: had the object gone first and the commit failed, preserved evidence
        # would be lost. Its key is destroyed already, so what remains meanwhile cannot be opened;
        # a failed delete is retried by the next release call.
        try:
            await self._blobs.destroy(evidence.blob_name)
        except OSError:
            log.warning("released evidence object not deleted yet", extra={"evidence_id": evidence_id})
        return view(caller, evidence, now)


def _may_attach_to(caller: Principal, incident: Incident) -> bool:
    effective = caller.effective
    if effective.role is Role.OPERATOR:
        return True
    return effective.role is Role.PROVIDER and incident.tenant_id == effective.tenant_id


def _hold_by_request(evidence: Evidence, placed_by: str, request_id: str) -> EvidenceHold | None:
    return next((h for h in evidence.holds if h.placed_by == placed_by and h.request_id == request_id), None)


def _iso(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
