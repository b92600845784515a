"""Benchmark: feed throughput to one client, side by side in one run.

The whole stack runs as processes (`avgate run`). The feed is seeded with
SEEDED incident items (copies of a real incident's stored form, as large as
an incident with facts, legal basis and content references), then one
client reads them all, three ways:

- Follow directly from reporting (a principal token signed with the
  gateway's key, as the gateway would);
- Follow through the gateway with the development regulator key;
- ListFeed directly, page by page (500 items, the maximum page).

Goal (issue 4): ≥ 5,000 incidents/s to one client. Run with `make bench`;
record the printed figures in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from sqlalchemy import text

from avgate.common.v1 import common_pb2
from avgate.kernel.db import sync_engine
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.principal import TOKEN_METADATA_KEY, Principal, RegulatorScope, Role, TokenSigner
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import Database
from tests.support import RunningStack

pytestmark = pytest.mark.bench

SEEDED = 50_000
FEED = "/avgate.reporting.v1.RegulatorFeedService/"


def _seed(stack: RunningStack, database: Database) -> str:
    """SEEDED feed items for one fresh tenant; returns the tenant."""
    key = stack.description["development_api_keys"]["provider"]
    item = reporting_pb2.IncidentInput(
        external_id=f"bench-{uuid.uuid4().hex[:8]}",
        source=reporting_pb2.INCIDENT_SOURCE_SCREENING,
        category=reporting_pb2.INCIDENT_CATEGORY_PROHIBITED_CONTENT,
        prohibited_type=common_pb2.PROHIBITED_CONTENT_TYPE_VIOLENCE,
        legal_basis=[common_pb2.LegalBasis(instrument="NAVIS-2019", article="9", paragraph="1")],
        facts="Uploaded video showed graphic violence against a person; transmission stopped at 00:41. " * 3,
        content=[common_pb2.ContentRef(content_id=f"v-{i}", sha256=f"{i:02x}" * 32) for i in range(3)],
        action=common_pb2.ActionTaken(type=common_pb2.ACTION_TYPE_TRANSMISSION_STOPPED),
        automated_detection=True,
        region_code="110105",
    )
    with grpc.insecure_channel(stack.gateway) as channel:
        created = reporting_pb2_grpc.IncidentServiceStub(channel).CreateIncident(
            reporting_pb2.CreateIncidentRequest(incident=item),
            metadata=(("authorization", f"Bearer {key}"),),
            timeout=10,
        )
    tenant = created.incident.tenant_id
    engine = sync_engine(database.admin_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "insert into reporting.feed_items (kind, incident_id, tenant_id, category, source, status, "
                    "route_departments, route_regions, create_time, payload) "
                    "select kind, 'inc-bench-' || g, tenant_id, category, source, status, route_departments, "
                    "route_regions, create_time, payload "
                    "from reporting.feed_items f cross join generate_series(2, :n) g where f.incident_id = :id"
                ),
                {"n": SEEDED, "id": created.incident.incident_id},
            )
            conn.execute(text("analyze reporting.feed_items"))
    finally:
        engine.dispose()
    return tenant


def _request(tenant: str) -> reporting_pb2.FeedFilter:
    return reporting_pb2.FeedFilter(
        incidents=reporting_pb2.IncidentFilter(tenant_ids=[tenant]), exclude_tree_heads=True
    )


async def _follow(target: str, metadata: tuple[tuple[str, str], ...], tenant: str) -> float:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reporting_pb2_grpc.RegulatorFeedServiceStub(channel)
        call = stub.Follow(reporting_pb2.FollowRequest(filter=_request(tenant)), metadata=metadata)
        received = 0
        start = time.perf_counter()
        async for response in call:
            received += response.HasField("item")
            if received == SEEDED:
                break
        elapsed = time.perf_counter() - start
        call.cancel()
    return SEEDED / elapsed


async def _list(target: str, metadata_for: object, tenant: str) -> float:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reporting_pb2_grpc.RegulatorFeedServiceStub(channel)
        received, token = 0, ""
        start = time.perf_counter()
        while received < SEEDED:
            response = await stub.ListFeed(
                reporting_pb2.ListFeedRequest(
                    filter=_request(tenant), page=common_pb2.PageRequest(page_size=500, page_token=token)
                ),
                metadata=metadata_for(),  # type: ignore[operator]
            )
            received += len(response.items)
            token = response.page.next_page_token
        return received / (time.perf_counter() - start)


def test_feed_throughput_to_one_client(running: RunningStack, database: Database) -> None:
    tenant = _seed(running, database)
    reporting = running.description["processes"]["reporting"]["grpc"]
    signer = TokenSigner(SigningKey("gateway", load_private_key(running.state_dir / "keys" / "gateway.key")))
    regulator = Principal(
        role=Role.REGULATOR,
        subject="bench-regulator",
        regulator_scope=RegulatorScope(("cyberspace",), ("000000",)),
    )

    def direct(method: str) -> tuple[tuple[str, str], ...]:
        return ((TOKEN_METADATA_KEY, signer.sign(regulator, audience="reporting", method=FEED + method)),)

    gateway_key = running.description["development_api_keys"]["regulator"]
    via_gateway = (("authorization", f"Bearer {gateway_key}"),)

    async def measure() -> dict[str, float]:
        await _follow(reporting, direct("Follow"), tenant)  # warm-up: caches, page cache
        return {
            "follow, direct": await _follow(reporting, direct("Follow"), tenant),
            "follow, through the gateway": await _follow(running.gateway, via_gateway, tenant),
            "list pages of 500, direct": await _list(reporting, lambda: direct("ListFeed"), tenant),
        }

    figures = asyncio.run(measure())
    base = figures["follow, direct"]
    print(f"\nfeed throughput to one client ({SEEDED:,} incidents, one stream):")
    for name, rate in figures.items():
        print(f"  {name:<30} {rate:>10,.0f} incidents/s   {rate / base:.2f}x")
    assert all(rate > 0 for rate in figures.values())
