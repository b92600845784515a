"""DeliveryService and the incident status that delivering sets, on the real
reporting server over a real socket, with gateway-signed principal tokens, a
real PostgreSQL, reporting's own dispatcher (the production wiring, built
from its settings) and a real local HTTP authority plus a file drop."""

from __future__ import annotations

import asyncio
import hashlib
import json
import pathlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import code_pb2, error_details_pb2
from prometheus_client import CollectorRegistry

from avgate.common.v1 import common_pb2
from avgate.kernel.db import libpq_url
from avgate.kernel.outbox import AttemptOutcome, Dispatcher
from avgate.kernel.principal import Principal
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.__main__ import compose
from services.reporting.config import ReportingSettings
from services.reporting.incidents.domain import outbox_event_id
from services.reporting.wiring import authority_dispatcher
from tests.conftest import Database
from tests.integration.authority_server import AuthorityServer
from tests.support import (
    Metadata,
    details,
    incident_input,
    operator,
    provider,
    regulator,
    serve,
    signer,
    stored_rows,
    token_metadata,
)
from tests.support.reporting import Reporting

DELIVERIES = "/avgate.reporting.v1.DeliveryService/"
INCIDENTS = "/avgate.reporting.v1.IncidentService/"
HTTP_DEPARTMENT = "cyberspace"  # PROHIBITED_CONTENT goes here (HTTP) and to radio_television (a file drop)
FILE_DEPARTMENT = "radio_television"
OPERATOR = operator("op-1", request_id="req-op")


@dataclass
class Setup:
    reporting: Reporting
    deliveries: reporting_pb2_grpc.DeliveryServiceStub
    settings: ReportingSettings
    drops: pathlib.Path
    authority: AuthorityServer

    def auth(self, principal: Principal, method: str) -> Metadata:
        return token_metadata(self.reporting.signer, principal, audience="reporting", method=DELIVERIES + method)

    def incident_auth(self, principal: Principal, method: str) -> Metadata:
        return token_metadata(self.reporting.signer, principal, audience="reporting", method=INCIDENTS + method)


@pytest.fixture(scope="module")
def authority() -> Iterator[AuthorityServer]:
    with AuthorityServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _answers_200(authority: AuthorityServer) -> None:
    authority.reset()


@pytest.fixture(scope="module")
async def setup(
    database: Database, keys_dir: pathlib.Path, authority: AuthorityServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Setup]:
    drops = tmp_path_factory.mktemp("drops")
    settings = ReportingSettings(
        trusted_keys_dir=keys_dir,  # type: ignore[call-arg]
        generate_keys=False,  # type: ignore[call-arg]
        state_dir=tmp_path_factory.mktemp("state"),  # type: ignore[call-arg]
        metrics_port=-1,
        grpc_port=0,
        database_url=database.url_for("reporting"),
        sequencer_enabled=False,
        dispatcher_enabled=False,  # each test runs the production dispatcher itself
        authorities={
            HTTP_DEPARTMENT: {"type": "http", "url": authority.url, "timeout": 5},
            FILE_DEPARTMENT: {"type": "file", "directory": str(drops)},
        },
        dispatcher_base_delay=0.02,
        dispatcher_max_delay=0.1,
    )
    async with serve(await compose(settings)) as served:
        yield Setup(
            Reporting(reporting_pb2_grpc.IncidentServiceStub(served.channel), signer(keys_dir), database),
            reporting_pb2_grpc.DeliveryServiceStub(served.channel),
            settings,
            drops,
            authority,
        )


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- helpers


@dataclass
class Created:
    incident_id: str
    http: uuid.UUID  # the event id, which is the delivery id and the idempotency key
    file: uuid.UUID

    @property
    def http_id(self) -> str:
        return str(self.http)

    @property
    def file_id(self) -> str:
        return str(self.file)


async def create(setup: Setup, tenant: str, **changes: Any) -> Created:
    reply = await setup.reporting.stub.CreateIncident(
        reporting_pb2.CreateIncidentRequest(incident=incident_input(f"ext-{uuid.uuid4().hex[:8]}", **changes)),
        metadata=setup.incident_auth(provider(tenant), "CreateIncident"),
    )
    incident_id = reply.incident.incident_id
    return Created(
        incident_id, outbox_event_id(incident_id, HTTP_DEPARTMENT), outbox_event_id(incident_id, FILE_DEPARTMENT)
    )


def dispatcher(setup: Setup, **changes: Any) -> Dispatcher:
    settings = setup.settings.model_copy(update=changes)
    return authority_dispatcher(settings, setup.settings.effective_database_url or "", CollectorRegistry())


def outbox_states(setup: Setup, event_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = setup.reporting.sql("select event_id, state from reporting.outbox where event_id = any(:ids)", ids=event_ids)
    return {r.event_id: r.state for r in rows}


async def dispatch_until(setup: Setup, done: Callable[[], bool], *dispatchers: Dispatcher, timeout: float = 30) -> None:
    """Runs the dispatchers (one by default) until `done()` holds."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(d.run(stop)) for d in dispatchers or (dispatcher(setup),)]
    deadline = time.monotonic() + timeout
    try:
        while not done():
            assert time.monotonic() < deadline, "the deliveries did not settle in time"
            for task in tasks:
                assert not task.done(), task.exception()
            await asyncio.sleep(0.03)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)


async def dispatch_until_settled(setup: Setup, event_ids: list[uuid.UUID], *dispatchers: Dispatcher) -> None:
    await dispatch_until(setup, lambda: "pending" not in outbox_states(setup, event_ids).values(), *dispatchers)


async def incident_status(setup: Setup, tenant: str, incident_id: str) -> int:
    reply = await setup.reporting.stub.GetIncident(
        reporting_pb2.GetIncidentRequest(incident_id=incident_id),
        metadata=setup.incident_auth(provider(tenant), "GetIncident"),
    )
    return int(reply.incident.status)


def ledger(setup: Setup, subject_id: str, action: str) -> list[dict[str, Any]]:
    rows = setup.reporting.sql(
        "select payload from ledger.queue where convert_from(payload, 'UTF8')::jsonb -> 'subject' ->> 'id' = :s "
        "order by queue_id",
        s=subject_id,
    )
    entries = [json.loads(bytes(r.payload)) for r in rows]
    return [e for e in entries if e["action"] == action]


async def get(setup: Setup, delivery_id: str, principal: Principal = OPERATOR) -> reporting_pb2.Delivery:
    reply = await setup.deliveries.GetDelivery(
        reporting_pb2.GetDeliveryRequest(delivery_id=delivery_id), metadata=setup.auth(principal, "GetDelivery")
    )
    return reply.delivery


async def replay(
    setup: Setup, ids: list[str], reason: str = "authority back up", principal: Principal = OPERATOR
) -> reporting_pb2.ReplayDeadLettersResponse:
    return await setup.deliveries.ReplayDeadLetters(
        reporting_pb2.ReplayDeadLettersRequest(delivery_ids=ids, reason=reason),
        metadata=setup.auth(principal, "ReplayDeadLetters"),
    )


async def list_deliveries(setup: Setup, principal: Principal, **request: Any) -> reporting_pb2.ListDeliveriesResponse:
    return await setup.deliveries.ListDeliveries(
        reporting_pb2.ListDeliveriesRequest(**request), metadata=setup.auth(principal, "ListDeliveries")
    )


def refused_with(raised: pytest.ExceptionInfo[grpc.aio.AioRpcError], code: grpc.StatusCode) -> None:
    assert raised.value.code() is code, raised.value.details()


def always(status: int) -> Callable[[str, int], int]:
    return lambda event_id, nth: status


# --------------------------------------------------------------------------- incident status


class TestIncidentStatusAfterDelivery:
    async def test_an_incident_delivered_to_every_department_is_delivered(self, setup: Setup, tenant: str) -> None:
        created = await create(setup, tenant)
        assert await incident_status(setup, tenant, created.incident_id) == reporting_pb2.INCIDENT_STATUS_RECORDED

        await dispatch_until_settled(setup, [created.http, created.file])

        assert await incident_status(setup, tenant, created.incident_id) == reporting_pb2.INCIDENT_STATUS_DELIVERED
        (entry,) = ledger(setup, created.incident_id, "incident.status")
        assert entry["data"]["from"] == "recorded" and entry["data"]["to"] == "delivered"
        assert entry["data"]["deliveries"] == {"delivered": 2}
        assert entry["tenant"] == tenant and entry["actor"]["role"] == "service"

    async def test_one_department_still_waiting_keeps_it_recorded(self, setup: Setup, tenant: str) -> None:
        setup.authority.policy = always(503)
        created = await create(setup, tenant)

        await dispatch_until(
            setup,
            lambda: (
                outbox_states(setup, [created.file])[created.file] == "delivered"
                and len(setup.authority.raw_for(created.http_id)) >= 2
            ),
        )

        assert outbox_states(setup, [created.http])[created.http] == "pending"
        assert await incident_status(setup, tenant, created.incident_id) == reporting_pb2.INCIDENT_STATUS_RECORDED
        assert ledger(setup, created.incident_id, "incident.status") == []
        setup.authority.policy = always(200)
        await dispatch_until_settled(setup, [created.http])
        assert await incident_status(setup, tenant, created.incident_id) == reporting_pb2.INCIDENT_STATUS_DELIVERED

    async def test_a_dead_delivery_fails_the_incident_until_an_operator_replays_it(
        self, setup: Setup, tenant: str
    ) -> None:
        setup.authority.policy = always(503)
        created = await create(setup, tenant)
        await dispatch_until_settled(setup, [created.http, created.file], dispatcher(setup, dispatcher_max_attempts=2))
        assert outbox_states(setup, [created.http, created.file]) == {created.http: "dead", created.file: "delivered"}
        assert (
            await incident_status(setup, tenant, created.incident_id) == reporting_pb2.INCIDENT_STATUS_DELIVERY_FAILED
        )
        (failed,) = ledger(setup, created.incident_id, "incident.status")
        assert (failed["data"]["from"], failed["data"]["to"]) == ("recorded", "delivery_failed")

        (replayed,) = (await replay(setup, [created.http_id], reason="authority back up")).deliveries

        assert replayed.state == reporting_pb2.DELIVERY_STATE_PENDING
        assert (replayed.replay_count, replayed.attempt_count) == (1, 0)
        assert replayed.idempotency_key == replayed.delivery_id == created.http_id
        assert [a.attempt for a in replayed.attempts] == [1, 2]  # the history is kept
        assert await incident_status(setup, tenant, created.incident_id) == reporting_pb2.INCIDENT_STATUS_RECORDED
        (entry,) = ledger(setup, created.http_id, "delivery.replay")
        assert entry["reason"] == "authority back up" and entry["tenant"] == tenant
        assert entry["actor"]["role"] == "operator" and entry["data"]["incident_id"] == created.incident_id
        recorded_again = ledger(setup, created.incident_id, "incident.status")[-1]
        assert (recorded_again["data"]["from"], recorded_again["data"]["to"]) == ("delivery_failed", "recorded")
        assert recorded_again["actor"]["role"] == "operator"

        setup.authority.policy = always(200)
        await dispatch_until_settled(setup, [created.http])

        assert await incident_status(setup, tenant, created.incident_id) == reporting_pb2.INCIDENT_STATUS_DELIVERED
        assert list(setup.authority.raw_counts().elements()).count(created.http_id) == 3
        assert created.http_id in setup.authority.accepted and setup.authority.duplicates[created.http_id] == 0
        delivered = await get(setup, created.http_id)
        assert (delivered.state, delivered.replay_count) == (reporting_pb2.DELIVERY_STATE_DELIVERED, 1)
        assert [a.attempt for a in delivered.attempts] == [1, 2, 1]

    async def test_an_acknowledged_incident_stays_acknowledged(self, setup: Setup, tenant: str) -> None:
        created = await create(setup, tenant)
        await setup.reporting.stub.AcknowledgeIncident(
            reporting_pb2.AcknowledgeIncidentRequest(incident_id=created.incident_id, request_id="ack-1"),
            metadata=setup.incident_auth(regulator(("cyberspace",), ("110000",)), "AcknowledgeIncident"),
        )

        await dispatch_until_settled(setup, [created.http, created.file])

        assert await incident_status(setup, tenant, created.incident_id) == reporting_pb2.INCIDENT_STATUS_ACKNOWLEDGED
        assert ledger(setup, created.incident_id, "incident.status") == []

    async def test_two_replicas_delivering_one_incidents_reports_leave_it_delivered(
        self, setup: Setup, tenant: str
    ) -> None:
        created = [await create(setup, tenant) for _ in range(12)]
        events = [e for c in created for e in (c.http, c.file)]

        await dispatch_until_settled(setup, events, dispatcher(setup), dispatcher(setup))

        for c in created:
            assert await incident_status(setup, tenant, c.incident_id) == reporting_pb2.INCIDENT_STATUS_DELIVERED
            assert len(ledger(setup, c.incident_id, "incident.status")) == 1


# --------------------------------------------------------------------------- attempt history


class TestAttemptHistory:
    async def test_each_attempt_is_recorded_with_its_http_status_and_the_receipt(
        self, setup: Setup, tenant: str
    ) -> None:
        setup.authority.policy = lambda event_id, nth: 503 if nth <= 2 else 200
        created = await create(setup, tenant)

        await dispatch_until_settled(setup, [created.http, created.file])

        d = await get(setup, created.http_id)
        assert d.state == reporting_pb2.DELIVERY_STATE_DELIVERED and d.attempt_count == 3
        assert [(a.attempt, a.http_status, a.result.code) for a in d.attempts] == [
            (1, 503, code_pb2.UNAVAILABLE),
            (2, 503, code_pb2.UNAVAILABLE),
            (3, 200, code_pb2.OK),
        ]
        assert "answered 503" in d.attempts[0].result.message
        starts = [a.start_time.ToDatetime() for a in d.attempts]
        assert starts == sorted(starts) and all(a.duration.ToNanoseconds() > 0 for a in d.attempts)
        answered = setup.authority.raw_for(created.http_id)
        assert [r.status for r in answered] == [503, 503, 200]
        assert d.receipt.raw_sha256 == answered[-1].answer_sha256
        assert d.receipt.receipt_id == f"rcpt-{created.http_id[:8]}"
        assert d.receipt.receive_time == d.deliver_time and d.deliver_time.seconds > 0
        (payload,) = setup.reporting.sql("select payload from reporting.outbox where event_id = :e", e=created.http)
        assert d.payload_sha256 == hashlib.sha256(bytes(payload.payload)).hexdigest()
        assert (d.tenant_id, d.subject_kind, d.subject_id) == (tenant, "incident", created.incident_id)
        assert d.endpoint == reporting_pb2.AuthorityEndpoint(
            endpoint_id=HTTP_DEPARTMENT,
            department=common_pb2.DEPARTMENT_CYBERSPACE,
            region_code="110105",
            adapter=reporting_pb2.ADAPTER_KIND_HTTP_JSON,
        )
        assert not d.HasField("next_attempt_time")

        f = await get(setup, created.file_id)
        assert f.endpoint.adapter == reporting_pb2.ADAPTER_KIND_FILE_DROP
        assert [(a.attempt, a.http_status, a.result.code) for a in f.attempts] == [(1, 0, code_pb2.OK)]
        lines = [line for path in setup.drops.glob("*.jsonl") for line in path.read_bytes().splitlines(keepends=True)]
        (line,) = [x for x in lines if json.loads(x)["event_id"] == created.file_id]
        assert f.receipt.raw_sha256 == hashlib.sha256(line).hexdigest() and f.receipt.receipt_id == ""

    async def test_a_refusal_is_dead_at_once_with_the_mapped_status(self, setup: Setup, tenant: str) -> None:
        setup.authority.policy = always(400)
        created = await create(setup, tenant)

        await dispatch_until_settled(setup, [created.http, created.file])

        d = await get(setup, created.http_id)
        assert d.state == reporting_pb2.DELIVERY_STATE_DEAD_LETTER and d.attempt_count == 1
        (attempt,) = d.attempts
        assert (attempt.http_status, attempt.result.code) == (400, code_pb2.INVALID_ARGUMENT)
        assert "answered 400" in attempt.result.message
        assert not d.HasField("receipt")
        assert (
            await incident_status(setup, tenant, created.incident_id) == reporting_pb2.INCIDENT_STATUS_DELIVERY_FAILED
        )

    async def test_only_the_latest_twenty_attempts_are_shown(self, setup: Setup, tenant: str) -> None:
        setup.authority.policy = always(503)
        created = await create(setup, tenant)

        await dispatch_until_settled(
            setup,
            [created.http, created.file],
            dispatcher(setup, dispatcher_max_attempts=23, dispatcher_base_delay=0.002, dispatcher_max_delay=0.01),
        )

        d = await get(setup, created.http_id)
        assert d.state == reporting_pb2.DELIVERY_STATE_DEAD_LETTER and d.attempt_count == 23
        assert [a.attempt for a in d.attempts] == list(range(4, 24))
        assert "attempts exhausted" in d.attempts[-1].result.message
        assert len(setup.authority.raw_for(created.http_id)) == 23

    async def test_a_leased_delivery_is_in_flight(self, setup: Setup, tenant: str) -> None:
        created = await create(setup, tenant)
        d = dispatcher(setup)
        url = libpq_url(setup.settings.effective_database_url or "")
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            claimed = await d.claim(conn, 100)
            try:
                assert created.http in {c.event_id for c in claimed}
                in_flight = await list_deliveries(
                    setup, provider(tenant), states=[reporting_pb2.DELIVERY_STATE_IN_FLIGHT]
                )
                assert {x.delivery_id for x in in_flight.deliveries} == {created.http_id, created.file_id}
                pending = await list_deliveries(setup, provider(tenant), states=[reporting_pb2.DELIVERY_STATE_PENDING])
                assert list(pending.deliveries) == []
            finally:  # hand the leases back: due again at once
                await d.record(conn, [AttemptOutcome(c, "retry", error="test") for c in claimed])
        again = await get(setup, created.http_id)
        assert again.state == reporting_pb2.DELIVERY_STATE_PENDING and again.HasField("next_attempt_time")


# --------------------------------------------------------------------------- who sees what


class TestScope:
    async def test_a_provider_sees_only_its_own_tenants_deliveries(self, setup: Setup, tenant: str) -> None:
        mine = await create(setup, tenant)
        other_tenant = f"{tenant}-b"
        theirs = await create(setup, other_tenant)

        listed = await list_deliveries(setup, provider(tenant))
        assert {d.delivery_id for d in listed.deliveries} == {mine.http_id, mine.file_id}
        assert {d.tenant_id for d in listed.deliveries} == {tenant}
        filtered = await list_deliveries(setup, provider(tenant), incident_id=theirs.incident_id)
        assert list(filtered.deliveries) == []
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await get(setup, theirs.http_id, provider(tenant))
        refused_with(hidden, grpc.StatusCode.NOT_FOUND)

        by_operator = await list_deliveries(setup, OPERATOR, incident_id=theirs.incident_id)
        assert {d.delivery_id for d in by_operator.deliveries} == {theirs.http_id, theirs.file_id}
        assert (await get(setup, theirs.http_id, provider(other_tenant))).tenant_id == other_tenant

    @pytest.mark.parametrize(
        "method", ["ListDeliveries", "GetDelivery", "ListDeadLetters", "ReplayDeadLetters"], ids=str
    )
    async def test_regulators_are_refused(self, setup: Setup, tenant: str, method: str) -> None:
        created = await create(setup, tenant)
        requests = {
            "ListDeliveries": reporting_pb2.ListDeliveriesRequest(),
            "GetDelivery": reporting_pb2.GetDeliveryRequest(delivery_id=created.http_id),
            "ListDeadLetters": reporting_pb2.ListDeadLettersRequest(),
            "ReplayDeadLetters": reporting_pb2.ReplayDeadLettersRequest(delivery_ids=[created.http_id], reason="x"),
        }
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await getattr(setup.deliveries, method)(
                requests[method], metadata=setup.auth(regulator(("cyberspace",), ("000000",)), method)
            )
        refused_with(refused, grpc.StatusCode.PERMISSION_DENIED)

    async def test_only_operators_replay(self, setup: Setup, tenant: str) -> None:
        setup.authority.policy = always(400)
        created = await create(setup, tenant)
        await dispatch_until_settled(setup, [created.http, created.file])

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await replay(setup, [created.http_id], principal=provider(tenant))

        refused_with(refused, grpc.StatusCode.PERMISSION_DENIED)
        assert outbox_states(setup, [created.http])[created.http] == "dead"
        assert ledger(setup, created.http_id, "delivery.replay") == []


# --------------------------------------------------------------------------- bad requests


NOT_A_UUID = "not-a-delivery"


class TestBadRequests:
    @pytest.mark.parametrize(
        ("method", "request_fields", "field"),
        [
            ("GetDelivery", {"delivery_id": NOT_A_UUID}, "delivery_id"),
            ("GetDelivery", {"delivery_id": ""}, "delivery_id"),
            ("ReplayDeadLetters", {"delivery_ids": [], "reason": "r"}, "delivery_ids"),
            ("ReplayDeadLetters", {"delivery_ids": [NOT_A_UUID], "reason": "r"}, "delivery_ids[0]"),
            (
                "ReplayDeadLetters",
                {"delivery_ids": [str(uuid.uuid4()) for _ in range(101)], "reason": "r"},
                "delivery_ids",
            ),
            ("ReplayDeadLetters", {"delivery_ids": ["SAME"] * 2, "reason": "r"}, "delivery_ids[1]"),
            ("ReplayDeadLetters", {"delivery_ids": [str(uuid.uuid4())], "reason": ""}, "reason"),
            ("ReplayDeadLetters", {"delivery_ids": [str(uuid.uuid4())], "reason": "x" * 501}, "reason"),
            ("ReplayDeadLetters", {"delivery_ids": [str(uuid.uuid4())], "reason": "call 13812345678"}, "reason"),
            ("ListDeliveries", {"endpoint_id": "police"}, "endpoint_id"),
            ("ListDeliveries", {"states": [99]}, "states[0]"),
            ("ListDeliveries", {"page": common_pb2.PageRequest(page_size=501)}, "page.page_size"),
            ("ListDeliveries", {"page": common_pb2.PageRequest(page_token="bm90IGEgdG9rZW4=")}, "page.page_token"),
            ("ListDeadLetters", {"endpoint_id": "authority:cyberspace"}, "endpoint_id"),
        ],
        ids=[
            "get-not-a-uuid",
            "get-empty",
            "replay-none",
            "replay-not-a-uuid",
            "replay-101",
            "replay-repeated",
            "replay-no-reason",
            "replay-long-reason",
            "replay-personal-data-in-reason",
            "list-unknown-endpoint",
            "list-unknown-state",
            "list-page-too-big",
            "list-foreign-token",
            "dead-letters-unknown-endpoint",
        ],
    )
    async def test_names_the_field_and_changes_nothing(
        self, setup: Setup, method: str, request_fields: dict[str, Any], field: str
    ) -> None:
        if request_fields.get("delivery_ids") == ["SAME"] * 2:
            same = str(uuid.uuid4())
            request_fields = {**request_fields, "delivery_ids": [same, same]}
        request = getattr(reporting_pb2, f"{method}Request")(**request_fields)
        before = stored_rows(setup.reporting.database.admin_url, None)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await getattr(setup.deliveries, method)(request, metadata=setup.auth(OPERATOR, method))
        refused_with(refused, grpc.StatusCode.INVALID_ARGUMENT)
        (bad,) = details(refused.value, error_details_pb2.BadRequest)
        assert field in {v.field for v in bad.field_violations}
        assert stored_rows(setup.reporting.database.admin_url, None) == before

    async def test_an_unknown_delivery_is_not_found(self, setup: Setup) -> None:
        unknown = str(uuid.uuid4())
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await get(setup, unknown)
        refused_with(missing, grpc.StatusCode.NOT_FOUND)
        (info,) = details(missing.value, error_details_pb2.ResourceInfo)
        assert (info.resource_type, info.resource_name) == ("delivery", unknown)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await replay(setup, [unknown])
        refused_with(missing, grpc.StatusCode.NOT_FOUND)

    async def test_replaying_a_delivery_that_is_not_dead_replays_nothing(self, setup: Setup, tenant: str) -> None:
        setup.authority.policy = always(400)
        created = await create(setup, tenant)
        await dispatch_until_settled(setup, [created.http, created.file])
        assert outbox_states(setup, [created.http, created.file]) == {created.http: "dead", created.file: "delivered"}
        before = stored_rows(setup.reporting.database.admin_url, None)

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await replay(setup, [created.http_id, created.file_id])
        assert stored_rows(setup.reporting.database.admin_url, None) == before
        assert outbox_states(setup, [created.http, created.file]) == {created.http: "dead", created.file: "delivered"}

        refused_with(refused, grpc.StatusCode.FAILED_PRECONDITION)
        (info,) = details(refused.value, error_details_pb2.ErrorInfo)
        assert info.reason == "ERROR_REASON_FAILED_PRECONDITION"
        assert info.metadata["delivery_ids"] == created.file_id
        dead = await get(setup, created.http_id)
        assert (dead.state, dead.replay_count) == (reporting_pb2.DELIVERY_STATE_DEAD_LETTER, 0)
        assert ledger(setup, created.http_id, "delivery.replay") == []
        assert (
            await incident_status(setup, tenant, created.incident_id) == reporting_pb2.INCIDENT_STATUS_DELIVERY_FAILED
        )


# --------------------------------------------------------------------------- listings


class TestListings:
    async def test_deliveries_page_newest_first_and_filter(self, setup: Setup, tenant: str) -> None:
        created = [await create(setup, tenant)]
        await dispatch_until_settled(setup, [created[0].http, created[0].file])
        created += [await create(setup, tenant) for _ in range(2)]  # these stay pending
        me = provider(tenant)

        first = await list_deliveries(setup, me, page=common_pb2.PageRequest(page_size=4))
        second = await list_deliveries(
            setup, me, page=common_pb2.PageRequest(page_size=4, page_token=first.page.next_page_token)
        )
        assert len(first.deliveries) == 4 and len(second.deliveries) == 2 and not second.page.next_page_token
        listed = [*first.deliveries, *second.deliveries]
        times = [(d.create_time.ToDatetime(), d.delivery_id) for d in listed]
        assert times == sorted(times, reverse=True)
        assert {d.subject_id for d in listed[:2]} == {created[2].incident_id}

        delivered = await list_deliveries(setup, me, states=[reporting_pb2.DELIVERY_STATE_DELIVERED])
        assert {d.delivery_id for d in delivered.deliveries} == {created[0].http_id, created[0].file_id}
        files = await list_deliveries(setup, me, endpoint_id=FILE_DEPARTMENT)
        assert {d.delivery_id for d in files.deliveries} == {c.file_id for c in created}
        assert {d.endpoint.adapter for d in files.deliveries} == {reporting_pb2.ADAPTER_KIND_FILE_DROP}
        one = await list_deliveries(setup, me, incident_id=created[1].incident_id)
        assert {d.delivery_id for d in one.deliveries} == {created[1].http_id, created[1].file_id}
        in_range = await list_deliveries(
            setup,
            me,
            create_time_range=common_pb2.TimeRange(start_time=listed[0].create_time),
        )
        assert {d.subject_id for d in in_range.deliveries} == {created[2].incident_id}

        await dispatch_until_settled(setup, [e for c in created for e in (c.http, c.file)])

    async def test_dead_letters_list_oldest_first(self, setup: Setup, tenant: str) -> None:
        setup.authority.policy = always(400)
        created = [await create(setup, tenant) for _ in range(3)]
        await dispatch_until_settled(setup, [e for c in created for e in (c.http, c.file)])

        first = await setup.deliveries.ListDeadLetters(
            reporting_pb2.ListDeadLettersRequest(page=common_pb2.PageRequest(page_size=2)),
            metadata=setup.auth(provider(tenant), "ListDeadLetters"),
        )
        rest = await setup.deliveries.ListDeadLetters(
            reporting_pb2.ListDeadLettersRequest(
                page=common_pb2.PageRequest(page_size=2, page_token=first.page.next_page_token)
            ),
            metadata=setup.auth(provider(tenant), "ListDeadLetters"),
        )
        assert [d.delivery_id for d in [*first.deliveries, *rest.deliveries]] == [c.http_id for c in created]
        assert {d.state for d in first.deliveries} == {reporting_pb2.DELIVERY_STATE_DEAD_LETTER}
        files = await setup.deliveries.ListDeadLetters(
            reporting_pb2.ListDeadLettersRequest(endpoint_id=FILE_DEPARTMENT),
            metadata=setup.auth(provider(tenant), "ListDeadLetters"),
        )
        assert list(files.deliveries) == []
