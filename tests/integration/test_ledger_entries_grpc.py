"""AuditLedgerService.ListEntries on the real reporting server (real tokens, real PostgreSQL,
its sequencer signing heads): a regulator reads in full only the entries about records it may
get and the entries it caused itself; every other entry comes as index, time and leaf hash,
and proofs over a tree with redacted entries still verify. Operators read everything."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

import grpc
import pytest

from avgate.ledger.checkpoint import open_checkpoint
from avgate.ledger.merkle import root_from_leaf_hashes, verify_inclusion
from avgate.reporting.v1 import reporting_pb2
from tests.support import regulator
from tests.support.factories import incident_input
from tests.support.reporting import OPERATOR, Feed

PUBLIC_SECURITY_XINJIANG = regulator(("public_security",), ("650000",), subject="reg-ps-650000")
CYBERSPACE_NATIONAL = regulator(("cyberspace",), ("000000",), subject="reg-cs-national")


async def all_entries(feed: Feed, principal: Any) -> list[reporting_pb2.LedgerEntry]:
    """Every entry up to the latest signed head, page by page, as `principal` lists them."""
    head = await latest_head(feed)
    entries: list[reporting_pb2.LedgerEntry] = []
    while len(entries) < head.tree_size:
        reply = await feed.ledger.ListEntries(
            reporting_pb2.ListEntriesRequest(start_index=len(entries), end_index=head.tree_size),
            metadata=feed.ledger_auth(principal, "ListEntries"),
        )
        assert reply.entries, "the page must not be empty below the signed size"
        entries.extend(reply.entries)
    return entries


async def latest_head(feed: Feed) -> reporting_pb2.SignedTreeHead:
    reply = await feed.ledger.GetLatestTreeHead(
        reporting_pb2.GetLatestTreeHeadRequest(), metadata=feed.ledger_auth(OPERATOR, "GetLatestTreeHead")
    )
    return reply.tree_head


def document(entry: reporting_pb2.LedgerEntry) -> dict[str, Any]:
    return json.loads(entry.canonical_json)  # type: ignore[no-any-return]


def find(entries: list[reporting_pb2.LedgerEntry], action: str, subject_id: str, actor: str = "") -> int:
    """The leaf index of the one (operator-visible) entry with this action, subject and actor subject."""
    found = [
        e.sequence_number
        for e in entries
        if not e.redacted
        and document(e)["action"] == action
        and document(e)["subject"]["id"] == subject_id
        and (not actor or document(e)["actor"]["subject"] == actor)
    ]
    assert len(found) == 1, (action, subject_id, found)
    return found[0]


async def sequenced(feed: Feed, wanted: list[tuple[str, str, str]]) -> list[reporting_pb2.LedgerEntry]:
    """The operator's view once every (action, subject id, actor) in `wanted` is under a signed head."""
    async with asyncio.timeout(30):
        while True:
            try:
                entries = await all_entries(feed, OPERATOR)
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.NOT_FOUND:  # no head signed yet
                    raise
                entries = []
            docs = [document(e) for e in entries]
            if all(
                any(d["action"] == a and d["subject"]["id"] == s and d["actor"]["subject"] == who for d in docs)
                for a, s, who in wanted
            ):
                return entries
            await asyncio.sleep(0.2)


@pytest.fixture
async def scene(feed: Feed, tenant: str) -> dict[str, Any]:
    """An incident routed to public_security/650000 and another tenant's cyberspace/110000 one,
    each read by the regulator whose scope covers it."""
    other_tenant = f"{tenant}-other"
    inside = await feed.create(
        tenant,
        incident_input(
            f"in-{uuid.uuid4().hex[:8]}",
            category=reporting_pb2.INCIDENT_CATEGORY_SECURITY_ASSESSMENT,
            prohibited_type=0,
            region_code="650102",
        ),
    )
    outside = await feed.create(
        other_tenant,
        incident_input(
            f"out-{uuid.uuid4().hex[:8]}", category=reporting_pb2.INCIDENT_CATEGORY_RUMOR, prohibited_type=0
        ),
    )
    assert outside.region_code.startswith("11")
    for principal, incident in ((PUBLIC_SECURITY_XINJIANG, inside), (CYBERSPACE_NATIONAL, outside)):
        await feed.incidents.GetIncident(
            reporting_pb2.GetIncidentRequest(incident_id=incident.incident_id),
            metadata=feed.auth(principal, "IncidentService", "GetIncident"),
        )
    everything = await sequenced(
        feed,
        [
            ("incident.create", inside.incident_id, f"key-{tenant}"),
            ("incident.create", outside.incident_id, f"key-{other_tenant}"),
            ("incident.read", inside.incident_id, PUBLIC_SECURITY_XINJIANG.subject),
            ("incident.read", outside.incident_id, CYBERSPACE_NATIONAL.subject),
        ],
    )
    return {"inside": inside, "outside": outside, "operator_view": everything}


class TestARegulatorReadsOnlyWhatItMayGet:
    async def test_it_cannot_get_the_other_tenants_incident(self, feed: Feed, scene: dict[str, Any]) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await feed.incidents.GetIncident(
                reporting_pb2.GetIncidentRequest(incident_id=scene["outside"].incident_id),
                metadata=feed.auth(PUBLIC_SECURITY_XINJIANG, "IncidentService", "GetIncident"),
            )
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND

    async def test_an_out_of_scope_incidents_entry_comes_as_index_time_and_leaf_hash_only(
        self, feed: Feed, scene: dict[str, Any]
    ) -> None:
        everything = scene["operator_view"]
        mine = {e.sequence_number: e for e in await all_entries(feed, PUBLIC_SECURITY_XINJIANG)}
        hidden = [
            find(everything, "incident.create", scene["outside"].incident_id),
            # another regulator's read trail
            find(everything, "incident.read", scene["outside"].incident_id, CYBERSPACE_NATIONAL.subject),
        ]
        for index in hidden:
            entry, full = mine[index], everything[index]
            assert entry.redacted
            assert entry.canonical_json == b"" and entry.entry_id == ""
            assert entry.leaf_hash == full.leaf_hash == hashlib.sha256(b"\x00" + full.canonical_json).digest()
            assert entry.integrate_time == full.integrate_time
            assert scene["outside"].incident_id.encode() not in entry.SerializeToString()

    async def test_in_scope_records_and_its_own_reads_come_in_full(self, feed: Feed, scene: dict[str, Any]) -> None:
        everything = scene["operator_view"]
        mine = {e.sequence_number: e for e in await all_entries(feed, PUBLIC_SECURITY_XINJIANG)}
        shown = [
            find(everything, "incident.create", scene["inside"].incident_id),
            find(everything, "incident.read", scene["inside"].incident_id, PUBLIC_SECURITY_XINJIANG.subject),
        ]
        for index in shown:
            assert not mine[index].redacted
            assert mine[index] == everything[index]

    async def test_other_events_are_redacted_and_the_operator_reads_everything(
        self, feed: Feed, scene: dict[str, Any]
    ) -> None:
        everything = scene["operator_view"]
        assert not any(e.redacted for e in everything)
        mine = await all_entries(feed, PUBLIC_SECURITY_XINJIANG)
        assert [e.sequence_number for e in mine] == [e.sequence_number for e in everything[: len(mine)]]
        for entry in mine:
            if not entry.redacted:
                actor = document(entry)["actor"]["subject"]
                subject = document(entry)["subject"]
                assert actor == PUBLIC_SECURITY_XINJIANG.subject or subject["type"] in {
                    "incident",
                    "evidence",
                    "security_assessment",
                    "refuted_rumor",
                    "export",
                }, document(entry)

    async def test_proofs_verify_over_a_tree_with_redacted_entries(self, feed: Feed, scene: dict[str, Any]) -> None:
        head = await latest_head(feed)
        checkpoint = open_checkpoint(bytes(head.checkpoint), [feed.verifier])
        mine = await all_entries(feed, PUBLIC_SECURITY_XINJIANG)
        size = checkpoint.size
        assert root_from_leaf_hashes([bytes(e.leaf_hash) for e in mine[:size]]) == checkpoint.root_hash
        index = find(scene["operator_view"], "incident.create", scene["outside"].incident_id)
        assert mine[index].redacted
        proof = await feed.ledger.GetInclusionProof(
            reporting_pb2.GetInclusionProofRequest(leaf_index=index, tree_size=size),
            metadata=feed.ledger_auth(PUBLIC_SECURITY_XINJIANG, "GetInclusionProof"),
        )
        verify_inclusion(
            bytes(mine[index].leaf_hash), index, size, [bytes(h) for h in proof.proof.audit_path], checkpoint.root_hash
        )
