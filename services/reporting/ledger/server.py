"""gRPC servicer of avgate.reporting.v1.AuditLedgerService: proto ⇄ domain only.

Heads, proofs and signing keys hold hashes, never tenant data, so every
authenticated caller may read them; entries themselves are for regulators
and operators, a regulator reading in full only those services.reporting.ledger.visibility
allows it (the others come redacted: index, time and leaf hash).
"""

from __future__ import annotations

import uuid

import grpc
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from avgate.kernel.convert import timestamp
from avgate.kernel.errors import FieldViolation, InvalidArgument, NotFound
from avgate.kernel.principal import Role, current_principal
from avgate.ledger.checkpoint import Checkpoint, NoteVerifier, Signature, UnverifiedNoteError, open_note
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.ledger.store import Head, LedgerReader
from services.reporting.ledger.visibility import RecordScopes, readable

MAX_ENTRIES_PER_PAGE = 1000


class AuditLedgerServicer(reporting_pb2_grpc.AuditLedgerServiceServicer):
    def __init__(self, reader: LedgerReader, records: RecordScopes):
        self._reader = reader
        self._records = records
        # The published keys change only on rotation: read them once, again when a head
        # names a key not yet seen.
        self._known: list[NoteVerifier] | None = None

    async def _verifiers(self, *, refresh: bool = False) -> list[NoteVerifier]:
        if self._known is None or refresh:
            self._known = [NoteVerifier.from_vkey(k.vkey) for k in await self._reader.signing_keys()]
        return self._known

    async def _open(self, note: bytes) -> tuple[bytes, list[Signature]]:
        try:
            return open_note(note, await self._verifiers())
        except UnverifiedNoteError:
            return open_note(note, await self._verifiers(refresh=True))

    async def head_proto(self, head: Head) -> reporting_pb2.SignedTreeHead:
        return await self.checkpoint_proto(head.checkpoint)

    async def checkpoint_proto(self, note: bytes) -> reporting_pb2.SignedTreeHead:
        """A signed checkpoint of this log as the proto (its signatures checked against the published keys)."""
        body, signatures = await self._open(note)
        checkpoint = Checkpoint.parse(body)
        message = reporting_pb2.SignedTreeHead(
            checkpoint=note,
            origin=checkpoint.origin,
            tree_size=checkpoint.size,
            root_hash=checkpoint.root_hash,
            signatures=[
                reporting_pb2.NoteSignature(
                    key_name=s.name, key_id=s.key_hash.to_bytes(4, "big"), signature=s.signature
                )
                for s in signatures
            ],
        )
        if checkpoint.timestamp_ms is not None:
            message.timestamp.FromMilliseconds(checkpoint.timestamp_ms)
        return message

    async def _latest(self) -> Head:
        head = await self._reader.latest_head()
        if head is None:
            raise NotFound("tree_head", "latest", "the ledger has no signed tree head yet")
        return head

    async def _head_at(self, tree_size: int, field: str) -> Head:
        if tree_size == 0:
            return await self._latest()
        head = await self._reader.head(tree_size)
        if head is None:
            raise NotFound("tree_head", str(tree_size), f"no tree head was signed at size {tree_size} ({field})")
        return head

    async def GetLatestTreeHead(
        self, request: reporting_pb2.GetLatestTreeHeadRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.GetLatestTreeHeadResponse:
        return reporting_pb2.GetLatestTreeHeadResponse(tree_head=await self.head_proto(await self._latest()))

    async def GetTreeHead(
        self, request: reporting_pb2.GetTreeHeadRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.GetTreeHeadResponse:
        if request.tree_size == 0:
            raise InvalidArgument(FieldViolation("tree_size", "must be at least 1"))
        head = await self._head_at(request.tree_size, "tree_size")
        return reporting_pb2.GetTreeHeadResponse(tree_head=await self.head_proto(head))

    async def GetInclusionProof(
        self, request: reporting_pb2.GetInclusionProofRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.GetInclusionProofResponse:
        head = await self._head_at(request.tree_size, "tree_size")
        which = request.WhichOneof("leaf")
        if which == "entry_id":
            try:
                entry_id = uuid.UUID(request.entry_id)
            except ValueError as exc:
                raise InvalidArgument(FieldViolation("entry_id", "must be a UUID")) from exc
            index = await self._reader.leaf_index_of(entry_id)
            if index is None:
                raise NotFound("ledger_entry", request.entry_id)
        elif which == "leaf_index":
            index = request.leaf_index
        else:
            raise InvalidArgument(FieldViolation("leaf", "set entry_id or leaf_index"))
        if index >= head.tree_size:
            raise InvalidArgument(
                FieldViolation("leaf_index", f"leaf {index} is not in the tree of size {head.tree_size}")
            )
        path = await self._reader.inclusion_proof(index, head.tree_size)
        return reporting_pb2.GetInclusionProofResponse(
            proof=reporting_pb2.InclusionProof(leaf_index=index, tree_size=head.tree_size, audit_path=path),
            leaf_hash=await self._reader.leaf_hash(index),
            tree_head=await self.head_proto(head),
        )

    async def GetConsistencyProof(
        self, request: reporting_pb2.GetConsistencyProofRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.GetConsistencyProofResponse:
        second = await self._head_at(request.second_tree_size, "second_tree_size")
        first = request.first_tree_size
        if first == 0 or first > second.tree_size:
            raise InvalidArgument(
                FieldViolation("first_tree_size", f"must be between 1 and the second tree size ({second.tree_size})")
            )
        path = await self._reader.consistency_proof(first, second.tree_size)
        return reporting_pb2.GetConsistencyProofResponse(
            proof=reporting_pb2.ConsistencyProof(first_tree_size=first, second_tree_size=second.tree_size, path=path),
            tree_head=await self.head_proto(second),
        )

    async def ListEntries(
        self, request: reporting_pb2.ListEntriesRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.ListEntriesResponse:
        caller = current_principal()
        caller.require_role(Role.REGULATOR, Role.OPERATOR)
        if request.end_index and request.end_index <= request.start_index:
            raise InvalidArgument(FieldViolation("end_index", "must be greater than start_index"))
        end = request.end_index or request.start_index + MAX_ENTRIES_PER_PAGE
        end = min(end, request.start_index + MAX_ENTRIES_PER_PAGE)
        entries = await self._reader.entries(request.start_index, end)
        full = await readable(caller, [e.payload for e in entries], self._records)
        return reporting_pb2.ListEntriesResponse(
            entries=[
                reporting_pb2.LedgerEntry(
                    entry_id=str(e.entry_id),
                    sequence_number=e.leaf_index,
                    canonical_json=e.payload,
                    leaf_hash=e.leaf_hash,
                    integrate_time=timestamp(e.integrated_at),
                )
                if shown
                else reporting_pb2.LedgerEntry(
                    sequence_number=e.leaf_index,
                    leaf_hash=e.leaf_hash,
                    integrate_time=timestamp(e.integrated_at),
                    redacted=True,
                )
                for e, shown in zip(entries, full, strict=True)
            ],
            first_retained_index=await self._reader.first_retained_index(),
        )

    async def ListSigningKeys(
        self, request: reporting_pb2.ListSigningKeysRequest, context: grpc.aio.ServicerContext
    ) -> reporting_pb2.ListSigningKeysResponse:
        keys = []
        for published in await self._reader.signing_keys():
            verifier = NoteVerifier.from_vkey(published.vkey)
            keys.append(
                reporting_pb2.SigningKey(
                    key_name=verifier.name,
                    key_id=verifier.key_hash.to_bytes(4, "big"),
                    public_key=verifier.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw),
                    verifier_key=published.vkey,
                    valid_from=timestamp(published.valid_from),
                    valid_until=timestamp(published.valid_until),
                )
            )
        return reporting_pb2.ListSigningKeysResponse(keys=keys)
