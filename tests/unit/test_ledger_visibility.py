"""Which ledger entries a regulator reads in full (services.reporting.ledger.visibility), against
an in-memory record lookup: its records in scope and its own acts, nothing else; one lookup a page."""

from __future__ import annotations

from typing import Any

import pytest

from avgate.kernel.canonical import canonical_json
from avgate.kernel.principal import Principal, Role
from services.reporting.domain import Route
from services.reporting.ledger.visibility import ScopeQuery, Scopes, readable
from tests.support import regulator

XINJIANG_POLICE = regulator(("public_security",), ("650000",), subject="reg-ps")
IN_SCOPE = (Route("public_security", "650102"), Route("cyberspace", "650102"))
OUT_OF_SCOPE = (Route("cyberspace", "110105"),)


class FakeRecords:
    def __init__(self) -> None:
        self.queries: list[ScopeQuery] = []

    async def scopes(self, query: ScopeQuery) -> Scopes:
        self.queries.append(query)
        return Scopes(
            {
                ("incident", "inc_in"): IN_SCOPE,
                ("incident", "inc_out"): OUT_OF_SCOPE,
                ("evidence", "evd_in"): OUT_OF_SCOPE + IN_SCOPE,  # attached to two incidents, one in scope
                ("evidence", "evd_out"): OUT_OF_SCOPE,
                ("security_assessment", "sa_in"): IN_SCOPE,
                ("security_assessment", "sa_out"): OUT_OF_SCOPE,
            },
            {"exp_mine": "reg-ps", "exp_theirs": "reg-other"},
        )


def entry(action: str, subject_type: str, subject_id: str, actor: dict[str, Any] | None = None) -> bytes:
    return canonical_json(
        {
            "action": action,
            "subject": {"type": subject_type, "id": subject_id},
            "tenant": "t-1",
            "actor": actor or {"role": "provider", "subject": "key-t-1", "tenant": "t-1"},
        }
    )


CASES = [
    ("in-scope incident", entry("incident.create", "incident", "inc_in"), True),
    ("out-of-scope incident", entry("incident.status", "incident", "inc_out"), False),
    ("unknown incident", entry("incident.create", "incident", "inc_gone"), False),
    ("evidence attached to an in-scope incident", entry("evidence.attach", "evidence", "evd_in"), True),
    ("evidence outside", entry("evidence.attach", "evidence", "evd_out"), False),
    ("assessment in scope", entry("security_assessment.record", "security_assessment", "sa_in"), True),
    ("assessment outside", entry("security_assessment.record", "security_assessment", "sa_out"), False),
    ("refuted rumour", entry("refuted_rumor.add", "refuted_rumor", "rum_1"), True),
    (
        "its own export",
        entry("feed.export.ready", "export", "exp_mine", {"role": "service", "subject": "reporting"}),
        True,
    ),
    (
        "another's export",
        entry("feed.export", "export", "exp_theirs", {"role": "regulator", "subject": "reg-other"}),
        False,
    ),
    ("its own read", entry("incident.read", "incident", "inc_out", {"role": "regulator", "subject": "reg-ps"}), True),
    (
        "its own read through a service",
        entry(
            "incident_page.list",
            "incident_page",
            "a..b",
            {"role": "service", "subject": "gateway", "on_behalf_of": {"role": "regulator", "subject": "reg-ps"}},
        ),
        True,
    ),
    (
        "another regulator's read",
        entry("incident.read", "incident", "inc_in", {"role": "regulator", "subject": "reg-other"}),
        False,  # the incident is in scope, but another regulator's trail is its own business
    ),
    (
        "another regulator's page",
        entry("incident.list", "incident_page", "a..b", {"role": "regulator", "subject": "reg-other"}),
        False,
    ),
    ("an API key change", entry("api_key.create", "api_key", "key_1", {"role": "operator", "subject": "ops"}), False),
    ("a consent", entry("consent.grant", "account", "acc_1"), False),
    ("an enforcement action", entry("enforcement.issue", "enforcement_action", "enf_1"), False),
    ("a delivery replay", entry("delivery.replay", "delivery", "evt_1", {"role": "operator", "subject": "ops"}), False),
    ("not JSON", b"\xff not json", False),
    ("not an object", b"[1, 2]", False),
]


@pytest.mark.parametrize(("payload", "shown"), [(p, s) for _, p, s in CASES], ids=[c[0] for c in CASES])
async def test_a_regulator_reads_in_full_only_what_it_may_get_or_did(payload: bytes, shown: bool) -> None:
    assert await readable(XINJIANG_POLICE, [payload], FakeRecords()) == [shown]


async def test_the_records_of_a_page_are_looked_up_once() -> None:
    records = FakeRecords()
    page = [p for _, p, _ in CASES]
    assert await readable(XINJIANG_POLICE, page, records) == [s for _, _, s in CASES]
    assert len(records.queries) == 1
    (query,) = records.queries
    assert query.ids["incident"] == {"inc_in", "inc_out", "inc_gone"}
    assert query.ids["evidence"] == {"evd_in", "evd_out"}
    assert query.export_ids == {"exp_mine", "exp_theirs"}


async def test_a_page_without_routed_records_needs_no_lookup() -> None:
    records = FakeRecords()
    page = [entry("api_key.create", "api_key", "key_1")]
    assert await readable(XINJIANG_POLICE, page, records) == [False]
    assert records.queries == []


async def test_a_regulator_without_a_scope_reads_only_its_own_acts() -> None:
    unscoped = Principal(role=Role.REGULATOR, subject="reg-none")
    page = [
        entry("incident.create", "incident", "inc_in"),
        entry("incident.read", "incident", "inc_in", {"role": "regulator", "subject": "reg-none"}),
    ]
    assert await readable(unscoped, page, FakeRecords()) == [False, True]


async def test_an_operator_reads_everything_without_a_lookup() -> None:
    records = FakeRecords()
    page = [p for _, p, _ in CASES]
    assert await readable(Principal(role=Role.OPERATOR, subject="ops"), page, records) == [True] * len(page)
    assert records.queries == []
