"""Benchmark: feed throughput to one client, side by side in one run.

The whole stack runs as processes (`avgate run`). The feed is seeded with
SEEDED incident items (copies of a real incident's stored form, as large as
an incident with facts, legal basis and content references), then one
client reads them all, three ways, after a warm-up read:

- Follow through the gateway with the development regulator key: the
  reference client's path (`avgate feed follow`), with its request — tree
  heads on, so the ledger's signed heads are interleaved with the incidents
  as the reference client receives them;
- Follow directly from reporting (a principal token signed with the
  gateway's key, as the gateway would), same request;
- ListFeed directly, page by page (500 items, the maximum page), same filter.

The rate is incidents received over the time from the call to the last one.
Goal (issue 4): ≥ 5,000 incidents/s to one client. Every reading must
deliver each seeded incident exactly once: that is what the test asserts;
the rates are printed with GOAL | FIGURE | MET/MISSED. Run with `make bench`;
record the printed figures in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
from sqlalchemy import text

from avgate.bench.verdict import Verdict
from avgate.common.v1 import common_pb2
from avgate.kernel.db import sync_engine
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.principal import TOKEN_METADATA_KEY, Principal, RegulatorScope, Role, TokenSigner
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.feed.cursor import FeedCursor
from tests.conftest import Database
from tests.support import RunningStack
from tests.support.stack import aio_service_channel

pytestmark = pytest.mark.bench

SEEDED = 50_000
GOAL = 5_000  # incidents/s to one client (issue 4)
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
    # As the reference client asks by default: tree heads included.
    return reporting_pb2.FeedFilter(
        incidents=reporting_pb2.IncidentFilter(tenant_ids=[tenant]), exclude_tree_heads=False
    )


@dataclass
class Reading:
    incidents: int
    distinct: int
    heads: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.incidents / self.seconds


def _count(item: reporting_pb2.FeedItem, ids: set[tuple[int, int]]) -> tuple[int, int]:
    if item.HasField("incident"):
        ids.add(FeedCursor.decode(item.cursor).position)  # the copies share their payload, not their position
        return 1, 0
    return 0, int(item.HasField("tree_head"))


async def _follow(
    open_channel: Callable[[], grpc.aio.Channel], metadata: tuple[tuple[str, str], ...], tenant: str
) -> Reading:
    async with open_channel() as channel:
        stub = reporting_pb2_grpc.RegulatorFeedServiceStub(channel)
        ids: set[tuple[int, int]] = set()
        incidents = heads = 0
        start = time.perf_counter()
        call = stub.Follow(reporting_pb2.FollowRequest(filter=_request(tenant)), metadata=metadata)
        async for response in call:
            if response.HasField("item"):
                i, h = _count(response.item, ids)
                incidents, heads = incidents + i, heads + h
                if incidents == SEEDED:
                    break
        elapsed = time.perf_counter() - start
        call.cancel()
    return Reading(incidents, len(ids), heads, elapsed)


async def _list(
    open_channel: Callable[[], grpc.aio.Channel],
    metadata_for: Callable[[], tuple[tuple[str, str], ...]],
    tenant: str,
) -> Reading:
    async with open_channel() as channel:
        stub = reporting_pb2_grpc.RegulatorFeedServiceStub(channel)
        ids: set[tuple[int, int]] = set()
        incidents = heads = 0
        token = ""
        start = time.perf_counter()
        while incidents < SEEDED:
            response = await stub.ListFeed(
                reporting_pb2.ListFeedRequest(
                    filter=_request(tenant), page=common_pb2.PageRequest(page_size=500, page_token=token)
                ),
                metadata=metadata_for(),
            )
            for item in response.items:
                i, h = _count(item, ids)
                incidents, heads = incidents + i, heads + h
            token = response.page.next_page_token
            if not token:
                break
        return Reading(incidents, len(ids), heads, time.perf_counter() - start)


def test_feed_throughput_to_one_client(running: RunningStack, database: Database) -> None:
    tenant = _seed(running, database)

    def reporting() -> grpc.aio.Channel:  # directly, over the stack's mTLS as the gateway would
        return aio_service_channel(running, "reporting")

    def gateway() -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(running.gateway)

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

    async def measure() -> dict[str, Reading]:
        await _follow(reporting, direct("Follow"), tenant)  # warm-up: caches, page cache
        return {
            "Follow through the gateway (reference client)": await _follow(gateway, via_gateway, tenant),
            "Follow directly from reporting": await _follow(reporting, direct("Follow"), tenant),
            "ListFeed pages of 500, directly": await _list(reporting, lambda: direct("ListFeed"), tenant),
        }

    readings = asyncio.run(measure())
    base = readings["Follow directly from reporting"].rate
    print(f"\nfeed throughput to one client ({SEEDED:,} incidents of one tenant, tree heads on):")
    for name, r in readings.items():
        print(
            f"  {name:<48} {r.rate:>10,.0f} incidents/s  {r.rate / base:.2f}x direct Follow  "
            f"({r.heads} tree heads interleaved, {r.seconds:.2f} s)"
        )
    for name, r in readings.items():
        print(
            Verdict(
                f"feed to one client, {name}", f"≥ {GOAL:,} incidents/s", f"{r.rate:,.0f} incidents/s", r.rate >= GOAL
            ).line()
        )
    for name, r in readings.items():
        assert (r.incidents, r.distinct) == (SEEDED, SEEDED), name  # every seeded incident, each exactly once
