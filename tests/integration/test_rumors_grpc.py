"""RumorService on real reporting servers, on real sockets, with
gateway-signed principal tokens and a real PostgreSQL: the registry, its
tenancy, retirement, and matching (also across replicas)."""

# ruff: noqa: RUF001 - Chinese punctuation is part of the texts under test

from __future__ import annotations

import asyncio
import json
import pathlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2

from avgate.common.v1 import common_pb2
from avgate.kernel.principal import Principal
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from services.reporting.__main__ import compose
from services.reporting.config import ReportingSettings
from tests.conftest import Database
from tests.support import (
    Tokens,
    admin_sql,
    details,
    operator,
    provider,
    regulator,
    serve,
    service,
    signer,
    violated_fields,
)

pytestmark = pytest.mark.db

SERVICE = "/avgate.reporting.v1.RumorService/"
CLAIM_ZH = "5G基站会传播新冠病毒，导致人感染"
CLAIM_EN = "Drinking hot water cures coronavirus infection"
OPERATOR = operator("ops-1", request_id="req-ops")


@dataclass
class Replica:
    stub: reporting_pb2_grpc.RumorServiceStub
    auth: Tokens  # outside callers come through the gateway; a service signs its own token

    async def add(self, caller: Principal, request_id: str | None = None, **fields: Any) -> reporting_pb2.RefutedRumor:
        reply = await self.stub.AddRefutedRumor(
            reporting_pb2.AddRefutedRumorRequest(request_id=request_id or uuid.uuid4().hex, rumor=rumor(**fields)),
            metadata=self.auth(caller, "AddRefutedRumor"),
        )
        return reply.rumor

    async def get(self, caller: Principal, rumor_id: str) -> reporting_pb2.RefutedRumor:
        reply = await self.stub.GetRefutedRumor(
            reporting_pb2.GetRefutedRumorRequest(rumor_id=rumor_id), metadata=self.auth(caller, "GetRefutedRumor")
        )
        return reply.rumor

    async def list(self, caller: Principal, **fields: Any) -> reporting_pb2.ListRefutedRumorsResponse:
        return await self.stub.ListRefutedRumors(
            reporting_pb2.ListRefutedRumorsRequest(**fields), metadata=self.auth(caller, "ListRefutedRumors")
        )

    async def retire(self, caller: Principal, rumor_id: str, reason: str = "superseded") -> reporting_pb2.RefutedRumor:
        reply = await self.stub.RetireRefutedRumor(
            reporting_pb2.RetireRefutedRumorRequest(rumor_id=rumor_id, reason=reason),
            metadata=self.auth(caller, "RetireRefutedRumor"),
        )
        return reply.rumor

    async def match(self, caller: Principal, **fields: Any) -> reporting_pb2.MatchTextResponse:
        return await self.stub.MatchText(
            reporting_pb2.MatchTextRequest(**fields), metadata=self.auth(caller, "MatchText")
        )


@dataclass
class Reporting:
    database: Database
    start: Callable[..., Any]
    main: Replica

    def sql(self, query: str, **params: Any) -> list[Any]:
        return admin_sql(self.database.admin_url, query, **params)


@pytest.fixture(scope="module")
async def reporting(database: Database, keys_dir: pathlib.Path) -> AsyncIterator[Reporting]:
    tokens = Tokens(signer(keys_dir), "reporting", SERVICE, services={"screening": signer(keys_dir, "screening")})

    @asynccontextmanager
    async def replica(refresh_seconds: float) -> AsyncIterator[Replica]:
        settings = ReportingSettings(
            trusted_keys_dir=keys_dir,  # type: ignore[call-arg]
            generate_keys=False,  # type: ignore[call-arg]
            metrics_port=-1,
            grpc_port=0,
            database_url=database.url_for("reporting"),
            sequencer_enabled=False,
            dispatcher_enabled=False,
            rumor_index_refresh_seconds=refresh_seconds,
        )
        async with serve(await compose(settings)) as served:
            yield Replica(reporting_pb2_grpc.RumorServiceStub(served.channel), tokens)

    async with replica(2.0) as main:
        yield Reporting(database, replica, main)


def screening_for(tenant: str) -> Principal:
    return service("screening", origin=provider(tenant))


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


YESTERDAY = datetime.now(UTC) - timedelta(days=1)


def rumor(**changes: Any) -> reporting_pb2.RefutedRumor:
    fields: dict[str, Any] = {
        "claim_text": CLAIM_ZH,
        "refutation_text": "5G基站的电磁辐射不会传播病毒，新冠病毒通过呼吸道飞沫和密切接触传播。",
        "refutation_url": "https://www.piyao.org.cn/example/5g",
        "issuing_authority": "中国互联网联合辟谣平台",
        "publish_time": timestamp(YESTERDAY),
    }
    fields.update(changes)
    return reporting_pb2.RefutedRumor(**fields)


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def ledger_entries(r: Reporting, action: str, subject_id: str) -> list[dict[str, Any]]:
    rows = r.sql(
        "select payload from ledger.queue where convert_from(payload, 'UTF8')::jsonb ->> 'action' = :a "
        "and convert_from(payload, 'UTF8')::jsonb #>> '{subject,id}' = :s",
        a=action,
        s=subject_id,
    )
    return [json.loads(bytes(row.payload)) for row in rows]


class TestAdding:
    async def test_a_provider_adds_an_entry_of_its_own_tenant(self, reporting: Reporting, tenant: str) -> None:
        added = await reporting.main.add(provider(tenant))
        assert added.rumor_id and added.tenant_id == tenant
        assert added.claim_text == CLAIM_ZH and added.issuing_authority == "中国互联网联合辟谣平台"
        assert added.HasField("create_time") and not added.HasField("retire_time")
        assert await reporting.main.get(provider(tenant), added.rumor_id) == added

    async def test_the_ledger_entry_holds_hashes_not_the_texts(self, reporting: Reporting, tenant: str) -> None:
        added = await reporting.main.add(provider(tenant))
        (entry,) = ledger_entries(reporting, "refuted_rumor.add", added.rumor_id)
        assert entry["tenant"] == tenant and entry["basis"] == "NAVIS-2019 Art. 13"
        assert len(entry["data"]["claim_sha256"]) == 64
        serialised = json.dumps(entry, ensure_ascii=False)
        assert CLAIM_ZH not in serialised and "piyao" not in serialised

    async def test_a_retry_returns_the_same_entry(self, reporting: Reporting, tenant: str) -> None:
        first = await reporting.main.add(provider(tenant), "add-1")
        again = await reporting.main.add(provider(tenant), "add-1")
        assert again == first
        assert reporting.sql("select count(*) from reporting.refuted_rumors where tenant_id = :t", t=tenant)[0][0] == 1

    async def test_concurrent_retries_add_one_entry(self, reporting: Reporting, tenant: str) -> None:
        added = await asyncio.gather(*(reporting.main.add(provider(tenant), "add-race") for _ in range(4)))
        assert all(a == added[0] for a in added)
        assert reporting.sql("select count(*) from reporting.refuted_rumors where tenant_id = :t", t=tenant)[0][0] == 1

    async def test_the_same_request_id_with_other_content_is_a_conflict(
        self, reporting: Reporting, tenant: str
    ) -> None:
        await reporting.main.add(provider(tenant), "add-1")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.main.add(provider(tenant), "add-1", claim_text=CLAIM_EN)
        assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
        (info,) = details(refused.value, error_details_pb2.ErrorInfo)
        assert info.reason == "ERROR_REASON_IDEMPOTENCY_CONFLICT"

    async def test_an_operator_adds_a_shared_entry(self, reporting: Reporting) -> None:
        added = await reporting.main.add(OPERATOR, claim_text=f"共享条目{uuid.uuid4().hex}")
        assert added.tenant_id == ""
        (entry,) = ledger_entries(reporting, "refuted_rumor.add", added.rumor_id)
        assert entry["data"]["shared"] is True

    async def test_a_provider_cannot_add_for_another_tenant(self, reporting: Reporting, tenant: str) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.main.add(provider(tenant), tenant_id=f"{tenant}-other")
        assert violated_fields(refused.value) == {"rumor.tenant_id"}

    async def test_regulators_do_not_add(self, reporting: Reporting) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.main.add(regulator())
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED

    async def test_invalid_input_names_every_field_and_stores_nothing(self, reporting: Reporting, tenant: str) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.main.add(
                provider(tenant),
                "bad-1",
                claim_text="",
                refutation_text="x" * 10_001,
                refutation_url="ftp://example.org/refutation",
                issuing_authority=" ",
                publish_time=timestamp(datetime.now(UTC) + timedelta(days=1)),
            )
        assert violated_fields(refused.value) == {
            "rumor.claim_text",
            "rumor.refutation_text",
            "rumor.refutation_url",
            "rumor.issuing_authority",
            "rumor.publish_time",
        }
        assert reporting.sql("select 1 from reporting.refuted_rumors where tenant_id = :t", t=tenant) == []

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"publish_time": None}, "rumor.publish_time"),
            ({"refutation_url": "https://"}, "rumor.refutation_url"),
            ({"refutation_url": "javascript:alert(1)"}, "rumor.refutation_url"),
            ({"claim_text": "?!"}, "rumor.claim_text"),
            ({"claim_text": "谣" * 5001}, "rumor.claim_text"),
        ],
        ids=["no-publish-time", "url-without-host", "url-other-scheme", "nothing-to-match", "claim-too-long"],
    )
    async def test_each_rule_is_named(
        self, reporting: Reporting, tenant: str, changes: dict[str, Any], field: str
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.main.add(provider(tenant), **changes)
        assert violated_fields(refused.value) == {field}

    async def test_an_empty_request_id_is_refused(self, reporting: Reporting, tenant: str) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.main.stub.AddRefutedRumor(
                reporting_pb2.AddRefutedRumorRequest(rumor=rumor()),
                metadata=reporting.main.auth(provider(tenant), "AddRefutedRumor"),
            )
        assert violated_fields(refused.value) == {"request_id"}


class TestVisibility:
    async def test_a_provider_sees_its_own_and_shared_entries_only(self, reporting: Reporting, tenant: str) -> None:
        other = f"{tenant}-other"
        mine = await reporting.main.add(provider(tenant))
        theirs = await reporting.main.add(provider(other))
        shared = await reporting.main.add(OPERATOR, claim_text=f"共享{uuid.uuid4().hex}")
        assert await reporting.main.get(provider(tenant), shared.rumor_id) == shared
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.main.get(provider(tenant), theirs.rumor_id)
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        listed = {r.rumor_id for r in (await reporting.main.list(provider(tenant))).rumors}
        assert {mine.rumor_id, shared.rumor_id} <= listed
        assert theirs.rumor_id not in listed
        assert all(r.tenant_id in ("", tenant) for r in (await reporting.main.list(provider(tenant))).rumors)

    async def test_a_regulator_reads_and_the_read_is_recorded(self, reporting: Reporting, tenant: str) -> None:
        added = await reporting.main.add(provider(tenant))
        assert await reporting.main.get(regulator(), added.rumor_id) == added
        (entry,) = ledger_entries(reporting, "refuted_rumor.read", added.rumor_id)
        assert entry["actor"]["role"] == "regulator" and entry["tenant"] == tenant


class TestListing:
    async def test_newest_first_in_pages(self, reporting: Reporting, tenant: str) -> None:
        added = [await reporting.main.add(provider(tenant), claim_text=f"谣言{n}号内容") for n in range(5)]
        mine = [r.rumor_id for r in reversed(added)]
        seen: list[str] = []
        token = ""
        while True:
            page = await reporting.main.list(
                provider(tenant), page=common_pb2.PageRequest(page_size=2, page_token=token)
            )
            seen.extend(r.rumor_id for r in page.rumors if r.tenant_id == tenant)
            token = page.page.next_page_token
            if not token:
                break
        assert seen == mine

    async def test_filters_by_authority_and_publish_time(self, reporting: Reporting, tenant: str) -> None:
        old = await reporting.main.add(
            provider(tenant), issuing_authority="某市网信办", publish_time=timestamp(YESTERDAY - timedelta(days=30))
        )
        new = await reporting.main.add(provider(tenant), issuing_authority="某市网信办")
        await reporting.main.add(provider(tenant), issuing_authority="其他机构")
        by_authority = await reporting.main.list(provider(tenant), issuing_authority="某市网信办")
        assert {r.rumor_id for r in by_authority.rumors} == {old.rumor_id, new.rumor_id}
        recent = await reporting.main.list(
            provider(tenant),
            issuing_authority="某市网信办",
            publish_time_range=common_pb2.TimeRange(start_time=timestamp(YESTERDAY - timedelta(days=1))),
        )
        assert [r.rumor_id for r in recent.rumors] == [new.rumor_id]


class TestRetiring:
    async def test_a_retired_entry_is_kept_but_not_listed_or_matched(self, reporting: Reporting, tenant: str) -> None:
        claim = f"喝热水可以治愈新冠病毒感染{uuid.uuid4().hex[:6]}"
        added = await reporting.main.add(provider(tenant), claim_text=claim)
        assert [m.rumor.rumor_id for m in (await reporting.main.match(provider(tenant), title=claim)).matches] == [
            added.rumor_id
        ]
        retired = await reporting.main.retire(provider(tenant), added.rumor_id, "refutation withdrawn")
        assert retired.HasField("retire_time") and retired.retire_reason == "refutation withdrawn"
        assert await reporting.main.get(provider(tenant), added.rumor_id) == retired
        assert (await reporting.main.match(provider(tenant), title=claim)).matches == []
        active = await reporting.main.list(provider(tenant))
        assert added.rumor_id not in {r.rumor_id for r in active.rumors}
        everything = await reporting.main.list(provider(tenant), include_retired=True)
        assert added.rumor_id in {r.rumor_id for r in everything.rumors}
        (entry,) = ledger_entries(reporting, "refuted_rumor.retire", added.rumor_id)
        assert entry["reason"] == "refutation withdrawn"

    async def test_retiring_again_changes_nothing(self, reporting: Reporting, tenant: str) -> None:
        added = await reporting.main.add(provider(tenant))
        first = await reporting.main.retire(provider(tenant), added.rumor_id, "first reason")
        again = await reporting.main.retire(provider(tenant), added.rumor_id, "second reason")
        assert again == first
        assert len(ledger_entries(reporting, "refuted_rumor.retire", added.rumor_id)) == 1

    async def test_providers_cannot_retire_shared_or_others_entries(self, reporting: Reporting, tenant: str) -> None:
        shared = await reporting.main.add(OPERATOR, claim_text=f"共享{uuid.uuid4().hex}")
        theirs = await reporting.main.add(provider(f"{tenant}-other"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.main.retire(provider(tenant), shared.rumor_id)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await reporting.main.retire(provider(tenant), theirs.rumor_id)
        assert hidden.value.code() is grpc.StatusCode.NOT_FOUND
        assert not (await reporting.main.get(OPERATOR, shared.rumor_id)).HasField("retire_time")

    async def test_a_reason_is_required(self, reporting: Reporting, tenant: str) -> None:
        added = await reporting.main.add(provider(tenant))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.main.retire(provider(tenant), added.rumor_id, "")
        assert violated_fields(refused.value) == {"reason"}


class TestMatching:
    async def test_a_provider_never_matches_another_tenants_entries(self, reporting: Reporting, tenant: str) -> None:
        claim = f"某品牌奶粉含有致癌物质{uuid.uuid4().hex[:8]}"
        mine = await reporting.main.add(provider(tenant), claim_text=claim)
        theirs = await reporting.main.add(provider(f"{tenant}-other"), claim_text=claim)
        shared = await reporting.main.add(OPERATOR, claim_text=claim)
        found = await reporting.main.match(provider(tenant), description=f"网传{claim}，请注意")
        assert {m.rumor.rumor_id for m in found.matches} == {mine.rumor_id, shared.rumor_id}
        assert theirs.rumor_id not in {m.rumor.rumor_id for m in found.matches}
        everything = await reporting.main.match(OPERATOR, description=claim)
        assert {mine.rumor_id, theirs.rumor_id, shared.rumor_id} <= {m.rumor.rumor_id for m in everything.matches}

    async def test_screening_matches_on_a_providers_behalf(self, reporting: Reporting, tenant: str) -> None:
        claim = f"某地自来水被投毒{uuid.uuid4().hex[:8]}"
        added = await reporting.main.add(provider(tenant), claim_text=claim)
        found = await reporting.main.match(screening_for(tenant), title=claim)
        (only,) = found.matches
        assert only.rumor == added
        assert only.score == 1.0
        assert only.field == reporting_pb2.TEXT_FIELD_TITLE
        assert only.method == "char-ngram-v1"
        assert only.matched_text == claim

    async def test_matches_are_best_first_above_the_threshold(self, reporting: Reporting, tenant: str) -> None:
        # A fresh tenant: only its own entries and the shared ones (none about garlic) can match.
        close = await reporting.main.add(provider(tenant), claim_text="吃大蒜能够预防新冠病毒感染")
        partial = await reporting.main.add(provider(tenant), claim_text="吃大蒜能够治疗所有的癌症")
        await reporting.main.add(provider(tenant), claim_text="月球背面住着外星人")
        text = "网上说吃大蒜能够预防新冠病毒感染，还说吃大蒜能够治疗癌症"
        default = await reporting.main.match(provider(tenant), transcript=text)
        assert default.threshold == pytest.approx(0.6)
        scores = [m.score for m in default.matches]
        assert scores == sorted(scores, reverse=True) and all(s >= 0.6 for s in scores)
        assert default.matches[0].rumor.rumor_id == close.rumor_id
        assert default.matches[0].field == reporting_pb2.TEXT_FIELD_TRANSCRIPT
        loose = await reporting.main.match(provider(tenant), transcript=text, threshold=0.3)
        assert loose.threshold == pytest.approx(0.3)
        assert [m.rumor.rumor_id for m in loose.matches][:2] == [close.rumor_id, partial.rumor_id]
        strict = await reporting.main.match(provider(tenant), transcript=text, threshold=1.0)
        assert [m.rumor.rumor_id for m in strict.matches] == [close.rumor_id]
        capped = await reporting.main.match(provider(tenant), transcript=text, threshold=0.3, max_results=1)
        assert [m.rumor.rumor_id for m in capped.matches] == [close.rumor_id]

    async def test_a_long_transcript_is_matched(self, reporting: Reporting, tenant: str) -> None:
        claim = f"核污染水会让海盐全部含有放射性物质{uuid.uuid4().hex[:6]}"
        added = await reporting.main.add(provider(tenant), claim_text=claim)
        filler = "大家好，欢迎收看今天的节目，我们来聊一聊生活中的小知识。"
        transcript = (filler * 7000)[:100_000] + "有人说" + claim + "。" + (filler * 7000)[:99_000]
        assert len(transcript) <= 200_000
        found = await reporting.main.match(provider(tenant), transcript=transcript)
        (only,) = [m for m in found.matches if m.rumor.rumor_id == added.rumor_id]
        assert only.score == 1.0
        assert claim in only.matched_text and len(only.matched_text) <= 500

    @pytest.mark.parametrize(
        ("request_fields", "fields"),
        [
            ({}, {"title"}),
            ({"title": "x", "threshold": 1.5}, {"threshold"}),
            ({"title": "x", "threshold": -0.1}, {"threshold"}),
            ({"title": "x", "max_results": 101}, {"max_results"}),
            ({"title": "谣" * 1001}, {"title"}),
            ({"transcript": "谣" * 200_001}, {"transcript"}),
        ],
        ids=["no-text", "threshold-above-1", "negative-threshold", "too-many-results", "long-title", "long-transcript"],
    )
    async def test_bad_requests_name_the_field(
        self, reporting: Reporting, tenant: str, request_fields: dict[str, Any], fields: set[str]
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.main.match(provider(tenant), **request_fields)
        assert violated_fields(refused.value) == fields

    async def test_content_of_another_tenant_is_refused(self, reporting: Reporting, tenant: str) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.main.match(
                provider(tenant),
                title="标题",
                content=common_pb2.ContentRef(tenant_id=f"{tenant}-other", content_id="v-1"),
            )
        assert violated_fields(refused.value) == {"content.tenant_id"}

    async def test_regulators_do_not_match(self, reporting: Reporting) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reporting.main.match(regulator(), title="标题")
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED


class TestReplicas:
    async def test_an_entry_added_elsewhere_is_matched_after_the_change_check(
        self, reporting: Reporting, tenant: str
    ) -> None:
        claim = f"某景区即将永久关闭{uuid.uuid4().hex[:8]}"
        # Refresh after every call: the change check itself is what is under test, not a clock.
        async with reporting.start(1e-9) as other:
            assert (await other.match(provider(tenant), title=claim)).matches == []  # its index is built
            added = await reporting.main.add(provider(tenant), claim_text=claim)
            assert [m.rumor.rumor_id for m in (await other.match(provider(tenant), title=claim)).matches] == [
                added.rumor_id
            ]
            await reporting.main.retire(provider(tenant), added.rumor_id)
            assert (await other.match(provider(tenant), title=claim)).matches == []

    async def test_an_entry_retired_elsewhere_is_never_returned_by_a_stale_index(
        self, reporting: Reporting, tenant: str
    ) -> None:
        claim = f"某银行即将倒闭请尽快取款{uuid.uuid4().hex[:8]}"
        added = await reporting.main.add(provider(tenant), claim_text=claim)
        async with reporting.start(3600.0) as stale:
            assert [m.rumor.rumor_id for m in (await stale.match(provider(tenant), title=claim)).matches] == [
                added.rumor_id
            ]
            await reporting.main.retire(provider(tenant), added.rumor_id)
            assert (await stale.match(provider(tenant), title=claim)).matches == []
