"""EvidenceService on the real reporting server, on a real socket, with
gateway-signed principal tokens, a real PostgreSQL and a real evidence
directory; time moves by an injected clock, never by sleeping."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pathlib
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2

from avgate.common.v1 import common_pb2
from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.principal import TOKEN_METADATA_KEY, Principal, RegulatorScope, Role, TokenSigner
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.__main__ import compose
from services.reporting.config import ReportingSettings
from services.reporting.evidence.crypto import KeyRing, sealed_size
from tests.conftest import Database
from tests.support import FakeClock, admin_sql, details, violated_fields

MiB = 1024 * 1024
EVIDENCE = "/avgate.reporting.v1.EvidenceService/"
INCIDENTS = "/avgate.reporting.v1.IncidentService/"
OPERATOR = Principal(role=Role.OPERATOR, subject="op-1", request_id="req-op")


def ticking_clock() -> FakeClock:
    """Starts now; moves only when told to, and by a microsecond per reading (as a real clock would, at least)."""
    return FakeClock(datetime.now(UTC), tick=timedelta(microseconds=1))


@dataclass
class Reporting:
    incidents: reporting_pb2_grpc.IncidentServiceStub
    evidence: reporting_pb2_grpc.EvidenceServiceStub
    gateway: TokenSigner
    screening: TokenSigner
    database: Database
    evidence_dir: pathlib.Path
    clock: FakeClock

    def auth(self, principal: Principal, method: str, *, service: str = EVIDENCE) -> tuple[tuple[str, str], ...]:
        if principal.role is Role.SERVICE:
            assert principal.origin is not None
            token = self.screening.sign_as_service(principal.origin, audience="reporting", method=service + method)
        else:
            token = self.gateway.sign(principal, audience="reporting", method=service + method)
        return ((TOKEN_METADATA_KEY, token),)

    def sql(self, query: str, **params: Any) -> list[Any]:
        return admin_sql(self.database.admin_url, query, **params)

    def ledger(self, action: str, subject_id: str) -> list[dict[str, Any]]:
        rows = self.sql(
            "select payload from ledger.queue where convert_from(payload, 'UTF8')::jsonb ->> 'action' = :a "
            "and convert_from(payload, 'UTF8')::jsonb -> 'subject' ->> 'id' = :s order by queue_id",
            a=action,
            s=subject_id,
        )
        return [json.loads(bytes(r.payload)) for r in rows]

    def objects(self) -> list[pathlib.Path]:
        """Sealed objects in place (not partial writes)."""
        if not self.evidence_dir.exists():
            return []
        return sorted(p for p in self.evidence_dir.rglob("*") if p.is_file() and ".partial" not in p.parts)


def write_key_file(path: pathlib.Path, *kids: str) -> None:
    existing = path.read_text() if path.exists() else ""
    path.write_text(existing + "".join(KeyRing.new_key_line(k) + "\n" for k in kids))


async def start(
    database: Database, keys_dir: pathlib.Path, evidence_dir: pathlib.Path, kek_file: pathlib.Path, clock: FakeClock
) -> GrpcProcess:
    settings = ReportingSettings(
        trusted_keys_dir=keys_dir,  # type: ignore[call-arg]
        generate_keys=False,  # type: ignore[call-arg]
        metrics_port=-1,
        grpc_port=0,
        database_url=database.url_for("reporting"),
        sequencer_enabled=False,  # these tests read the entries waiting in the ledger's queue
        dispatcher_enabled=False,
        evidence_dir=evidence_dir,
        evidence_kek_file=kek_file,
    )
    process: GrpcProcess = await compose(settings, clock=clock)
    await process.start()
    return process


@pytest.fixture(scope="module")
async def reporting(
    database: Database, keys_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Reporting]:
    state = tmp_path_factory.mktemp("evidence")
    kek_file = state / "evidence.kek"
    write_key_file(kek_file, "k1")
    clock = ticking_clock()
    process = await start(database, keys_dir, state / "objects", kek_file, clock)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{process.port}")
    try:
        yield Reporting(
            reporting_pb2_grpc.IncidentServiceStub(channel),
            reporting_pb2_grpc.EvidenceServiceStub(channel),
            TokenSigner(SigningKey("gateway", load_private_key(keys_dir / "gateway.key"))),
            TokenSigner(SigningKey("screening", load_private_key(keys_dir / "screening.key"))),
            database,
            state / "objects",
            clock,
        )
    finally:
        await channel.close()
        await process.stop()


@pytest.fixture(autouse=True)
def restore_clock(request: pytest.FixtureRequest) -> Iterator[None]:
    if "reporting" not in request.fixturenames:
        yield
        return
    clock: FakeClock = request.getfixturevalue("reporting").clock
    before = clock.now
    yield
    clock.now = before


def provider(tenant: str) -> Principal:
    return Principal(role=Role.PROVIDER, subject=f"key-{tenant}", tenant_id=tenant, request_id="req-1")


def regulator(departments: tuple[str, ...], regions: tuple[str, ...]) -> Principal:
    return Principal(role=Role.REGULATOR, subject="reg-1", regulator_scope=RegulatorScope(departments, regions))


BEIJING_CYBERSPACE = regulator(("cyberspace",), ("110000",))
GUANGDONG_CYBERSPACE = regulator(("cyberspace",), ("440000",))


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def new_incident(r: Reporting, tenant: str, region: str = "110105") -> str:
    item = reporting_pb2.IncidentInput(
        external_id=uuid.uuid4().hex,
        source=reporting_pb2.INCIDENT_SOURCE_SCREENING,
        category=reporting_pb2.INCIDENT_CATEGORY_RUMOR,
        legal_basis=[common_pb2.LegalBasis(instrument="NAVIS-2019", article="13")],
        facts="A refuted rumour was reposted; transmission stopped.",
        region_code=region,
    )
    reply = await r.incidents.CreateIncident(
        reporting_pb2.CreateIncidentRequest(incident=item),
        metadata=r.auth(provider(tenant), "CreateIncident", service=INCIDENTS),
    )
    return str(reply.incident.incident_id)


def upload_metadata(incident_id: str, data: bytes, **changes: Any) -> reporting_pb2.EvidenceUploadMetadata:
    fields: dict[str, Any] = {
        "request_id": uuid.uuid4().hex,
        "incident_id": incident_id,
        "media_type": "video/mp4",
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "file_name": "clip.mp4",
        "description": "The reposted clip, as served.",
    }
    fields.update(changes)
    return reporting_pb2.EvidenceUploadMetadata(**fields)


def upload_messages(
    metadata: reporting_pb2.EvidenceUploadMetadata, data: bytes, chunk: int = MiB
) -> list[reporting_pb2.AttachEvidenceRequest]:
    return [
        reporting_pb2.AttachEvidenceRequest(metadata=metadata),
        *(reporting_pb2.AttachEvidenceRequest(chunk=data[i : i + chunk]) for i in range(0, len(data), chunk)),
    ]


async def send(
    r: Reporting, principal: Principal, messages: Sequence[reporting_pb2.AttachEvidenceRequest]
) -> reporting_pb2.Evidence:
    async def requests() -> AsyncIterator[reporting_pb2.AttachEvidenceRequest]:
        for message in messages:
            yield message

    reply = await r.evidence.AttachEvidence(requests(), metadata=r.auth(principal, "AttachEvidence"), timeout=60)
    return reply.evidence


async def attach(
    r: Reporting, principal: Principal, incident_id: str, data: bytes, **changes: Any
) -> reporting_pb2.Evidence:
    return await send(r, principal, upload_messages(upload_metadata(incident_id, data, **changes), data))


async def read(
    r: Reporting, principal: Principal, evidence_id: str, offset: int = 0
) -> list[reporting_pb2.ReadEvidenceResponse]:
    call = r.evidence.ReadEvidence(
        reporting_pb2.ReadEvidenceRequest(evidence_id=evidence_id, offset=offset),
        metadata=r.auth(principal, "ReadEvidence"),
        timeout=60,
    )
    return [reply async for reply in call]


async def get(r: Reporting, principal: Principal, evidence_id: str) -> reporting_pb2.Evidence:
    reply = await r.evidence.GetEvidence(
        reporting_pb2.GetEvidenceRequest(evidence_id=evidence_id), metadata=r.auth(principal, "GetEvidence")
    )
    return reply.evidence


async def hold(
    r: Reporting, principal: Principal, evidence_id: str, request_id: str = "hold-1", **changes: Any
) -> reporting_pb2.HoldEvidenceResponse:
    fields: dict[str, Any] = {"request_id": request_id, "evidence_id": evidence_id, "reason": "under investigation"}
    fields.update(changes)
    return await r.evidence.HoldEvidence(
        reporting_pb2.HoldEvidenceRequest(**fields), metadata=r.auth(principal, "HoldEvidence")
    )


async def lift(r: Reporting, principal: Principal, evidence_id: str, hold_id: str) -> reporting_pb2.Evidence:
    reply = await r.evidence.LiftEvidenceHold(
        reporting_pb2.LiftEvidenceHoldRequest(evidence_id=evidence_id, hold_id=hold_id, reason="case closed"),
        metadata=r.auth(principal, "LiftEvidenceHold"),
    )
    return reply.evidence


async def release(r: Reporting, principal: Principal, evidence_id: str) -> reporting_pb2.Evidence:
    reply = await r.evidence.ReleaseEvidence(
        reporting_pb2.ReleaseEvidenceRequest(evidence_id=evidence_id, reason="preservation period over"),
        metadata=r.auth(principal, "ReleaseEvidence"),
    )
    return reply.evidence


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


class TestUploadAndRead:
    async def test_a_multi_chunk_upload_reads_back_equal_and_resumes_from_an_offset(
        self, reporting: Reporting, tenant: str
    ) -> None:
        incident_id = await new_incident(reporting, tenant)
        data = os.urandom(3 * MiB + 12_345)
        stored = await attach(reporting, provider(tenant), incident_id, data)
        assert stored.evidence_id.startswith("evd")
        assert stored.tenant_id == tenant
        assert stored.ref == common_pb2.EvidenceRef(
            sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), media_type="video/mp4"
        )
        assert list(stored.incident_ids) == [incident_id]
        assert stored.state == reporting_pb2.EVIDENCE_STATE_PRESERVED
        assert stored.attached_by == f"key-{tenant}"

        whole = await read(reporting, OPERATOR, stored.evidence_id)
        assert b"".join(r.chunk for r in whole) == data
        assert all(len(r.chunk) <= MiB for r in whole)
        assert [r.offset for r in whole] == [sum(len(c.chunk) for c in whole[:i]) for i in range(len(whole))]

        offset = MiB + MiB // 2 + 7
        resumed = await read(reporting, OPERATOR, stored.evidence_id, offset)
        assert resumed[0].offset == offset
        assert b"".join(r.chunk for r in resumed) == data[offset:]
        assert await read(reporting, OPERATOR, stored.evidence_id, len(data)) == []

    async def test_an_empty_file_is_evidence_too(self, reporting: Reporting, tenant: str) -> None:
        incident_id = await new_incident(reporting, tenant)
        stored = await send(reporting, provider(tenant), upload_messages(upload_metadata(incident_id, b""), b""))
        assert stored.ref.size_bytes == 0
        assert stored.ref.sha256 == hashlib.sha256(b"").hexdigest()
        assert await read(reporting, OPERATOR, stored.evidence_id) == []

    async def test_the_bytes_on_disk_are_sealed(self, reporting: Reporting, tenant: str) -> None:
        incident_id = await new_incident(reporting, tenant)
        data = b"frame of the reposted clip " * 100_000
        before = set(reporting.objects())
        await attach(reporting, provider(tenant), incident_id, data)
        (added,) = set(reporting.objects()) - before
        on_disk = added.read_bytes()
        assert len(on_disk) == sealed_size(len(data))
        assert b"frame of the reposted clip" not in on_disk
        assert hashlib.sha256(data).hexdigest() not in str(added)
        assert tenant not in str(added)

    async def test_a_tampered_object_is_refused_not_served(self, reporting: Reporting, tenant: str) -> None:
        incident_id = await new_incident(reporting, tenant)
        data = os.urandom(2 * MiB + 100)
        before = set(reporting.objects())
        stored = await attach(reporting, provider(tenant), incident_id, data)
        (added,) = set(reporting.objects()) - before
        sealed = bytearray(added.read_bytes())
        sealed[MiB + MiB // 2] ^= 0x01  # inside the second segment
        added.write_bytes(bytes(sealed))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await read(reporting, OPERATOR, stored.evidence_id)
        assert refused.value.code() is grpc.StatusCode.INTERNAL
        # Each segment authenticates on its own: a read resumed past the tampered one succeeds.
        rest = await read(reporting, OPERATOR, stored.evidence_id, 2 * MiB)
        assert b"".join(r.chunk for r in rest) == data[2 * MiB :]

    async def test_a_truncated_object_is_refused(self, reporting: Reporting, tenant: str) -> None:
        incident_id = await new_incident(reporting, tenant)
        data = os.urandom(MiB + 100)
        before = set(reporting.objects())
        stored = await attach(reporting, provider(tenant), incident_id, data)
        (added,) = set(reporting.objects()) - before
        added.write_bytes(added.read_bytes()[: sealed_size(MiB)])  # cut after the first (non-final) segment
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await read(reporting, OPERATOR, stored.evidence_id)
        assert refused.value.code() is grpc.StatusCode.INTERNAL


class TestRefusedUploads:
    @pytest.mark.parametrize(
        ("declared", "field"),
        [({"size_bytes": 5000}, "metadata.size_bytes"), ({"sha256": "0" * 64}, "metadata.sha256")],
        ids=["size", "sha256"],
    )
    async def test_a_mismatch_names_the_field_and_stores_nothing(
        self, reporting: Reporting, tenant: str, declared: dict[str, Any], field: str
    ) -> None:
        incident_id = await new_incident(reporting, tenant)
        data = os.urandom(4000)
        before = reporting.objects()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await attach(reporting, provider(tenant), incident_id, data, **declared)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(refused.value) == {field}
        assert reporting.objects() == before
        assert reporting.sql("select 1 from reporting.evidence where tenant_id = :t", t=tenant) == []
        assert reporting.sql("select 1 from reporting.evidence_attachments where tenant_id = :t", t=tenant) == []
        assert (
            reporting.sql(
                "select 1 from ledger.queue where convert_from(payload, 'UTF8')::jsonb ->> 'tenant' = :t "
                "and convert_from(payload, 'UTF8')::jsonb ->> 'action' = 'evidence.attach'",
                t=tenant,
            )
            == []
        )

    @pytest.mark.parametrize(
        ("shape", "field"),
        [
            ("nothing", "metadata"),
            ("chunk-first", "metadata"),
            ("metadata-twice", "metadata"),
            ("oversized-chunk", "chunk"),
            ("empty-message", "payload"),
        ],
        ids=lambda v: v if "-" in v or v == "nothing" else "",
    )
    async def test_a_stream_out_of_shape_is_refused(
        self, reporting: Reporting, tenant: str, shape: str, field: str
    ) -> None:
        incident_id = await new_incident(reporting, tenant)
        data = os.urandom(MiB + 1)
        metadata = reporting_pb2.AttachEvidenceRequest(metadata=upload_metadata(incident_id, data))
        chunk = reporting_pb2.AttachEvidenceRequest(chunk=data[:10])
        messages = {
            "nothing": [],
            "chunk-first": [chunk, metadata],
            "metadata-twice": [metadata, chunk, metadata],
            "oversized-chunk": [metadata, reporting_pb2.AttachEvidenceRequest(chunk=data)],
            "empty-message": [metadata, reporting_pb2.AttachEvidenceRequest()],
        }[shape]
        before = reporting.objects()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await send(reporting, provider(tenant), messages)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(refused.value) == {field}
        assert reporting.objects() == before

    async def test_more_bytes_than_declared_are_refused_as_they_arrive(self, reporting: Reporting, tenant: str) -> None:
        incident_id = await new_incident(reporting, tenant)
        data = os.urandom(100)
        never = asyncio.Event()

        async def requests() -> AsyncIterator[reporting_pb2.AttachEvidenceRequest]:
            yield reporting_pb2.AttachEvidenceRequest(metadata=upload_metadata(incident_id, data, size_bytes=50))
            yield reporting_pb2.AttachEvidenceRequest(chunk=data)
            await never.wait()  # the client never ends its stream: only an early refusal ends the call

        try:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await reporting.evidence.AttachEvidence(
                    requests(), metadata=reporting.auth(provider(tenant), "AttachEvidence"), timeout=30
                )
        finally:
            never.set()  # lets the client's request pump finish
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(refused.value) == {"metadata.size_bytes"}

    async def test_invalid_metadata_names_every_field(self, reporting: Reporting, tenant: str) -> None:
        incident_id = await new_incident(reporting, tenant)
        bad = upload_metadata(
            incident_id, b"x", request_id="", media_type="video", size_bytes=-1, sha256="ABC", file_name="a" * 256
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await send(reporting, provider(tenant), [reporting_pb2.AttachEvidenceRequest(metadata=bad)])
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(refused.value) == {
            "metadata.request_id",
            "metadata.media_type",
            "metadata.size_bytes",
            "metadata.sha256",
            "metadata.file_name",
        }


class TestIdempotencyAndDeduplication:
    async def test_a_retried_upload_returns_the_same_evidence_without_the_bytes(
        self, reporting: Reporting, tenant: str
    ) -> None:
        incident_id = await new_incident(reporting, tenant)
        data = os.urandom(MiB + 10)
        metadata = upload_metadata(incident_id, data)
        first = await send(reporting, provider(tenant), upload_messages(metadata, data))
        again = await send(reporting, provider(tenant), upload_messages(metadata, data))
        metadata_only = await send(
            reporting, provider(tenant), [reporting_pb2.AttachEvidenceRequest(metadata=metadata)]
        )
        assert again == first
        assert metadata_only == first
        assert len(reporting.sql("select 1 from reporting.evidence where tenant_id = :t", t=tenant)) == 1
        assert len(reporting.ledger("evidence.attach", first.evidence_id)) == 1

    async def test_a_request_id_reused_for_other_content_is_a_conflict(self, reporting: Reporting, tenant: str) -> None:
        incident_id = await new_incident(reporting, tenant)
        await attach(reporting, provider(tenant), incident_id, b"first", request_id="upload-1")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await attach(reporting, provider(tenant), incident_id, b"second", request_id="upload-1")
        assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
        (info,) = details(refused.value, error_details_pb2.ErrorInfo)
        assert info.reason == "ERROR_REASON_IDEMPOTENCY_CONFLICT"

    async def test_identical_bytes_are_stored_once_within_a_tenant(self, reporting: Reporting, tenant: str) -> None:
        first_incident = await new_incident(reporting, tenant)
        second_incident = await new_incident(reporting, tenant)
        data = os.urandom(300_000)
        before = reporting.objects()
        first = await attach(reporting, provider(tenant), first_incident, data)
        second = await attach(reporting, OPERATOR, second_incident, data, file_name="other.mp4")
        assert second.evidence_id == first.evidence_id
        assert list(second.incident_ids) == [first_incident, second_incident]
        assert second.file_name == "clip.mp4"  # the evidence keeps what its first upload said
        assert len(reporting.objects()) == len(before) + 1
        entries = reporting.ledger("evidence.attach", first.evidence_id)
        assert [e["data"]["deduplicated"] for e in entries] == [False, True]
        assert [e["data"]["incident_id"] for e in entries] == [first_incident, second_incident]

    async def test_concurrent_uploads_of_the_same_bytes_end_in_one_evidence(
        self, reporting: Reporting, tenant: str
    ) -> None:
        incident_id = await new_incident(reporting, tenant)
        data = os.urandom(2 * MiB)
        before = reporting.objects()
        results = await asyncio.gather(*(attach(reporting, provider(tenant), incident_id, data) for _ in range(3)))
        assert len({r.evidence_id for r in results}) == 1
        assert len(reporting.objects()) == len(before) + 1
        assert len(reporting.ledger("evidence.attach", results[0].evidence_id)) == 3

    async def test_identical_bytes_of_another_tenant_are_kept_apart(self, reporting: Reporting, tenant: str) -> None:
        other = f"{tenant}-b"
        data = os.urandom(10_000)
        before = reporting.objects()
        mine = await attach(reporting, provider(tenant), await new_incident(reporting, tenant), data)
        theirs = await attach(reporting, provider(other), await new_incident(reporting, other), data)
        assert theirs.evidence_id != mine.evidence_id
        assert theirs.tenant_id == other
        assert len(reporting.objects()) == len(before) + 2
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await get(reporting, provider(tenant), theirs.evidence_id)
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND


class TestWhoMayAttach:
    async def test_a_provider_attaching_to_another_tenants_incident_gets_not_found(
        self, reporting: Reporting, tenant: str
    ) -> None:
        theirs = await new_incident(reporting, f"{tenant}-b")
        before = reporting.objects()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await attach(reporting, provider(tenant), theirs, b"bytes")
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        assert reporting.objects() == before

    async def test_a_regulator_may_not_attach(self, reporting: Reporting, tenant: str) -> None:
        incident_id = await new_incident(reporting, tenant)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await attach(reporting, BEIJING_CYBERSPACE, incident_id, b"bytes")
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED

    async def test_a_service_attaches_on_behalf_of_the_provider(self, reporting: Reporting, tenant: str) -> None:
        incident_id = await new_incident(reporting, tenant)
        screening = Principal(role=Role.SERVICE, subject="screening", origin=provider(tenant))
        stored = await attach(reporting, screening, incident_id, b"frame")
        assert stored.tenant_id == tenant
        assert stored.attached_by == f"key-{tenant}"
        (entry,) = reporting.ledger("evidence.attach", stored.evidence_id)
        assert entry["actor"]["role"] == "service"
        assert entry["actor"]["on_behalf_of"]["tenant"] == tenant

    async def test_an_operator_attaches_to_any_tenants_incident(self, reporting: Reporting, tenant: str) -> None:
        stored = await attach(reporting, OPERATOR, await new_incident(reporting, tenant), b"operator upload")
        assert stored.tenant_id == tenant
        assert stored.attached_by == "op-1"


class TestWhoMaySeeAndRead:
    @pytest.fixture
    async def stored(self, reporting: Reporting, tenant: str) -> reporting_pb2.Evidence:
        beijing = await new_incident(reporting, tenant, region="110105")
        shanghai = await new_incident(reporting, tenant, region="310101")
        data = os.urandom(2 * MiB + MiB // 2)
        await attach(reporting, provider(tenant), beijing, data)
        return await attach(reporting, provider(tenant), shanghai, data)

    async def test_the_owning_provider_sees_the_metadata_but_may_not_read_the_bytes(
        self, reporting: Reporting, tenant: str, stored: reporting_pb2.Evidence
    ) -> None:
        assert (await get(reporting, provider(tenant), stored.evidence_id)).ref == stored.ref
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await read(reporting, provider(tenant), stored.evidence_id)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert reporting.ledger("evidence.read", stored.evidence_id) == []

    async def test_another_provider_gets_not_found(
        self, reporting: Reporting, tenant: str, stored: reporting_pb2.Evidence
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await get(reporting, provider(f"{tenant}-b"), stored.evidence_id)
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND

    async def test_a_regulator_in_scope_sees_its_incidents_and_reads_with_one_entry_per_read(
        self, reporting: Reporting, stored: reporting_pb2.Evidence
    ) -> None:
        seen = await get(reporting, BEIJING_CYBERSPACE, stored.evidence_id)
        assert list(seen.incident_ids) == [stored.incident_ids[0]]  # not the Shanghai incident
        (entry,) = reporting.ledger("evidence.get", stored.evidence_id)
        assert entry["actor"]["role"] == "regulator"

        chunks = await read(reporting, BEIJING_CYBERSPACE, stored.evidence_id)
        assert len(chunks) == 3
        await read(reporting, BEIJING_CYBERSPACE, stored.evidence_id, MiB)
        reads = reporting.ledger("evidence.read", stored.evidence_id)
        assert [e["data"]["offset"] for e in reads] == [0, MiB]
        assert {e["basis"] for e in reads} == {"NAVIS-2019 Art. 17"}

    async def test_a_regulator_out_of_scope_gets_not_found(
        self, reporting: Reporting, stored: reporting_pb2.Evidence
    ) -> None:
        for call in (get, read):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(reporting, GUANGDONG_CYBERSPACE, stored.evidence_id)
            assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        assert reporting.ledger("evidence.read", stored.evidence_id) == []

    async def test_operator_reads_are_recorded_too(self, reporting: Reporting, stored: reporting_pb2.Evidence) -> None:
        await read(reporting, OPERATOR, stored.evidence_id)
        (entry,) = reporting.ledger("evidence.read", stored.evidence_id)
        assert entry["actor"]["role"] == "operator"

    async def test_an_offset_past_the_end_is_invalid(
        self, reporting: Reporting, stored: reporting_pb2.Evidence
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await read(reporting, OPERATOR, stored.evidence_id, stored.ref.size_bytes + 1)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(refused.value) == {"offset"}


class TestPreservation:
    @pytest.fixture
    async def stored(self, reporting: Reporting, tenant: str) -> reporting_pb2.Evidence:
        return await attach(reporting, provider(tenant), await new_incident(reporting, tenant), os.urandom(MiB + 1))

    def past_preservation(self, reporting: Reporting, days: int = 366) -> None:
        reporting.clock.now += timedelta(days=days)

    async def test_evidence_is_preserved_for_a_year_from_its_attachment(self, stored: reporting_pb2.Evidence) -> None:
        retained = stored.retain_until.ToDatetime() - stored.create_time.ToDatetime()
        assert retained == timedelta(days=365)

    async def test_release_within_the_period_says_until_when(
        self, reporting: Reporting, stored: reporting_pb2.Evidence
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await release(reporting, OPERATOR, stored.evidence_id)
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "preserved until" in (refused.value.details() or "")
        assert (await get(reporting, OPERATOR, stored.evidence_id)).state == reporting_pb2.EVIDENCE_STATE_PRESERVED

    async def test_hold_lift_and_release(self, reporting: Reporting, stored: reporting_pb2.Evidence) -> None:
        evidence_id = stored.evidence_id
        self.past_preservation(reporting)
        assert (await get(reporting, OPERATOR, evidence_id)).state == reporting_pb2.EVIDENCE_STATE_RELEASABLE

        placed = await hold(reporting, OPERATOR, evidence_id)
        assert placed.evidence.state == reporting_pb2.EVIDENCE_STATE_HELD
        assert placed.hold.placed_by == "op-1"
        retried = await hold(reporting, OPERATOR, evidence_id)
        assert retried.hold.hold_id == placed.hold.hold_id
        assert len(retried.evidence.holds) == 1

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await release(reporting, OPERATOR, evidence_id)
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert placed.hold.hold_id in (refused.value.details() or "")

        lifted = await lift(reporting, OPERATOR, evidence_id, placed.hold.hold_id)
        assert lifted.state == reporting_pb2.EVIDENCE_STATE_RELEASABLE
        assert lifted.holds[0].HasField("lift_time")

        (blob_name,) = reporting.sql("select blob_name from reporting.evidence where evidence_id = :e", e=evidence_id)
        assert any(p.name == blob_name.blob_name for p in reporting.objects())
        released = await release(reporting, OPERATOR, evidence_id)
        assert released.state == reporting_pb2.EVIDENCE_STATE_RELEASED
        assert released.HasField("release_time")
        assert not any(p.name == blob_name.blob_name for p in reporting.objects())
        (row,) = reporting.sql(
            "select kek_id, wrapped_key from reporting.evidence where evidence_id = :e", e=evidence_id
        )
        assert row.kek_id is None and row.wrapped_key is None

        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await read(reporting, OPERATOR, evidence_id)
        assert gone.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        after = await get(reporting, OPERATOR, evidence_id)
        assert after.state == reporting_pb2.EVIDENCE_STATE_RELEASED
        assert after.ref == stored.ref

        assert len(reporting.ledger("evidence.hold", evidence_id)) == 1
        assert len(reporting.ledger("evidence.hold_lift", evidence_id)) == 1
        (entry,) = reporting.ledger("evidence.release", evidence_id)
        assert entry["reason"] == "preservation period over"
        assert (await release(reporting, OPERATOR, evidence_id)).state == reporting_pb2.EVIDENCE_STATE_RELEASED
        assert len(reporting.ledger("evidence.release", evidence_id)) == 1

    async def test_a_hold_with_an_end_lapses_by_itself(
        self, reporting: Reporting, stored: reporting_pb2.Evidence
    ) -> None:
        until = reporting.clock.now + timedelta(days=400)
        await hold(reporting, OPERATOR, stored.evidence_id, until_time=timestamp(until))
        self.past_preservation(reporting, days=380)
        assert (await get(reporting, OPERATOR, stored.evidence_id)).state == reporting_pb2.EVIDENCE_STATE_HELD
        self.past_preservation(reporting, days=21)
        assert (await get(reporting, OPERATOR, stored.evidence_id)).state == reporting_pb2.EVIDENCE_STATE_RELEASABLE

    async def test_a_hold_ending_in_the_past_is_invalid(
        self, reporting: Reporting, stored: reporting_pb2.Evidence
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await hold(
                reporting, OPERATOR, stored.evidence_id, until_time=timestamp(reporting.clock.now - timedelta(days=1))
            )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(refused.value) == {"until_time"}

    async def test_a_request_id_reused_for_another_hold_is_a_conflict(
        self, reporting: Reporting, stored: reporting_pb2.Evidence
    ) -> None:
        await hold(reporting, OPERATOR, stored.evidence_id, reason="first")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await hold(reporting, OPERATOR, stored.evidence_id, reason="second")
        assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS

    async def test_regulators_in_scope_hold_and_lift_their_own_holds_only(
        self, reporting: Reporting, stored: reporting_pb2.Evidence
    ) -> None:
        self.past_preservation(reporting)
        mine = await hold(reporting, BEIJING_CYBERSPACE, stored.evidence_id, request_id="reg-hold")
        assert mine.evidence.state == reporting_pb2.EVIDENCE_STATE_HELD
        (entry,) = reporting.ledger("evidence.hold", stored.evidence_id)
        assert entry["actor"]["role"] == "regulator"
        operators = await hold(reporting, OPERATOR, stored.evidence_id, request_id="op-hold")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await lift(reporting, BEIJING_CYBERSPACE, stored.evidence_id, operators.hold.hold_id)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        lifted = await lift(reporting, BEIJING_CYBERSPACE, stored.evidence_id, mine.hold.hold_id)
        assert lifted.state == reporting_pb2.EVIDENCE_STATE_HELD  # the operator's hold remains
        for refusal, code in (
            (hold(reporting, GUANGDONG_CYBERSPACE, stored.evidence_id), grpc.StatusCode.NOT_FOUND),
            (release(reporting, BEIJING_CYBERSPACE, stored.evidence_id), grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await refusal
            assert refused.value.code() is code

    async def test_providers_may_not_hold_or_release(
        self, reporting: Reporting, tenant: str, stored: reporting_pb2.Evidence
    ) -> None:
        for refusal in (
            hold(reporting, provider(tenant), stored.evidence_id),
            release(reporting, provider(tenant), stored.evidence_id),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await refusal
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED

    async def test_attaching_the_same_bytes_again_restarts_the_period(
        self, reporting: Reporting, tenant: str, stored: reporting_pb2.Evidence
    ) -> None:
        self.past_preservation(reporting)
        data = await read(reporting, OPERATOR, stored.evidence_id)
        again = await attach(
            reporting, provider(tenant), await new_incident(reporting, tenant), b"".join(r.chunk for r in data)
        )
        assert again.evidence_id == stored.evidence_id
        assert again.state == reporting_pb2.EVIDENCE_STATE_PRESERVED
        assert again.retain_until.ToDatetime() > stored.retain_until.ToDatetime()


class TestKeyRotation:
    async def test_evidence_sealed_under_an_old_kek_still_reads_after_rotation(
        self, database: Database, keys_dir: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        tenant = f"t-{uuid.uuid4().hex[:12]}"
        kek_file = tmp_path / "evidence.kek"
        write_key_file(kek_file, "2026-01")
        objects = tmp_path / "objects"
        old_data, new_data = os.urandom(MiB + 5), os.urandom(MiB + 6)

        async def session() -> AsyncIterator[Reporting]:
            process = await start(database, keys_dir, objects, kek_file, ticking_clock())
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{process.port}")
            try:
                yield Reporting(
                    reporting_pb2_grpc.IncidentServiceStub(channel),
                    reporting_pb2_grpc.EvidenceServiceStub(channel),
                    TokenSigner(SigningKey("gateway", load_private_key(keys_dir / "gateway.key"))),
                    TokenSigner(SigningKey("screening", load_private_key(keys_dir / "screening.key"))),
                    database,
                    objects,
                    ticking_clock(),
                )
            finally:
                await channel.close()
                await process.stop()

        async for before in session():
            old = await attach(before, provider(tenant), await new_incident(before, tenant), old_data)
        write_key_file(kek_file, "2026-07")
        async for after in session():
            new = await attach(after, provider(tenant), await new_incident(after, tenant), new_data)
            assert b"".join(r.chunk for r in await read(after, OPERATOR, old.evidence_id)) == old_data
            assert b"".join(r.chunk for r in await read(after, OPERATOR, new.evidence_id)) == new_data
            kek_ids = dict(
                after.sql(
                    "select evidence_id, kek_id from reporting.evidence where evidence_id in (:a, :b)",
                    a=old.evidence_id,
                    b=new.evidence_id,
                )
            )
            assert kek_ids == {old.evidence_id: "2026-01", new.evidence_id: "2026-07"}
