"""Reporting's services as the integration tests drive them: `Reporting` (the IncidentService
with signed tokens) and `create`; `Feed` (incidents, the regulator feed and evidence on one
server whose sequencer signs tree heads) and `create_many`, which waits until the feed serves
what it created."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from avgate.common.v1 import common_pb2
from avgate.kernel.principal import TOKEN_METADATA_KEY, Principal, Role, TokenSigner
from avgate.ledger.checkpoint import NoteVerifier
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.config import ReportingSettings
from tests.conftest import Database
from tests.support.factories import incident_input
from tests.support.principals import Metadata, provider, regulator, token_metadata
from tests.support.sql import admin_sql, ledger_entries

INCIDENT_SERVICE = "/avgate.reporting.v1.IncidentService/"


@dataclass
class Reporting:
    """A reporting server's IncidentService, the gateway's token signer, and its database."""

    stub: reporting_pb2_grpc.IncidentServiceStub
    signer: TokenSigner
    database: Database

    def auth(self, principal: Principal, method: str) -> Metadata:
        return token_metadata(self.signer, principal, audience="reporting", method=INCIDENT_SERVICE + method)

    def sql(self, query: str, **params: Any) -> list[Any]:
        return admin_sql(self.database.admin_url, query, **params)


async def create(r: Reporting, tenant: str, item: reporting_pb2.IncidentInput) -> reporting_pb2.CreateIncidentResponse:
    """`item` created as the tenant's provider."""
    return await r.stub.CreateIncident(
        reporting_pb2.CreateIncidentRequest(incident=item), metadata=r.auth(provider(tenant), "CreateIncident")
    )


ORIGIN = "avgate.test/feed"  # the ledger origin the `feed` fixture's sequencer signs tree heads under
OPERATOR = Principal(role=Role.OPERATOR, subject="ops-1")
CYBERSPACE_BEIJING = regulator(("cyberspace",), ("110000",))


@dataclass
class Feed:
    """A reporting server with its sequencer on (the `feed` fixture): incidents, the regulator feed,
    evidence and the audit ledger on one channel, the verifier of its tree heads, and the settings it runs with."""

    incidents: reporting_pb2_grpc.IncidentServiceStub
    feed: reporting_pb2_grpc.RegulatorFeedServiceStub
    evidence: reporting_pb2_grpc.EvidenceServiceStub
    signer: TokenSigner
    database: Database
    verifier: NoteVerifier
    settings: ReportingSettings
    ledger: reporting_pb2_grpc.AuditLedgerServiceStub

    def auth(self, principal: Principal, service: str, method: str) -> tuple[tuple[str, str], ...]:
        token = self.signer.sign(principal, audience="reporting", method=f"/avgate.reporting.v1.{service}/{method}")
        return ((TOKEN_METADATA_KEY, token),)

    def ledger_auth(self, principal: Principal, method: str) -> tuple[tuple[str, str], ...]:
        return self.auth(principal, "AuditLedgerService", method)

    def feed_auth(self, principal: Principal, method: str) -> tuple[tuple[str, str], ...]:
        return self.auth(principal, "RegulatorFeedService", method)

    async def create(self, tenant: str, item: reporting_pb2.IncidentInput) -> reporting_pb2.Incident:
        response = await self.incidents.CreateIncident(
            reporting_pb2.CreateIncidentRequest(incident=item),
            metadata=self.auth(provider(tenant), "IncidentService", "CreateIncident"),
        )
        return response.incident

    def scalar(self, query: str, **params: Any) -> Any:
        return admin_sql(self.database.admin_url, query, **params)[0][0]

    async def list_all(self, principal: Principal, **request: Any) -> list[reporting_pb2.FeedItem]:
        """Every item after the request's cursor, page by page."""
        items: list[reporting_pb2.FeedItem] = []
        token = ""
        while True:
            response = await self.feed.ListFeed(
                reporting_pb2.ListFeedRequest(page=common_pb2.PageRequest(page_size=7, page_token=token), **request),
                metadata=self.feed_auth(principal, "ListFeed"),
            )
            items.extend(response.items)
            token = response.page.next_page_token
            if not token:
                return items

    def ledger_actions(self, action: str) -> list[dict[str, Any]]:
        return ledger_entries(self.database.admin_url, action)


def only_tenant(tenant: str, **fields: Any) -> reporting_pb2.FeedFilter:
    """A feed filter for the tenant's incidents (matching `fields` too), without tree heads."""
    return reporting_pb2.FeedFilter(
        incidents=reporting_pb2.IncidentFilter(tenant_ids=[tenant], **fields), exclude_tree_heads=True
    )


async def create_many(f: Feed, tenant: str, n: int, *, settle: bool = True, **changes: Any) -> list[str]:
    """Creates n incidents; with `settle`, returns once the feed serves every item of the tenant.

    The feed serves an item once every transaction older than it has ended, anywhere on the
    PostgreSQL server; another client's transaction still running can delay it (never reorder it).
    """
    ids = []
    for i in range(n):
        incident = await f.create(tenant, incident_input(f"ext-{uuid.uuid4().hex[:8]}-{i}", **changes))
        ids.append(incident.incident_id)
    if settle:
        written = f.scalar("select count(*) from reporting.feed_items where tenant_id = :t", t=tenant)
        async with asyncio.timeout(30):
            while len(await f.list_all(OPERATOR, filter=only_tenant(tenant))) < written:
                await asyncio.sleep(0.1)
    return ids
