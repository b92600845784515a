"""Evidence state is derived from the release, the preservation period and the
holds at an instant; release is blocked for a stated reason; who sees what."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from avgate.kernel.principal import Principal, RegulatorScope, Role
from services.reporting.domain import Route
from services.reporting.evidence.crypto import SealedKey
from services.reporting.evidence.domain import (
    Evidence,
    EvidenceHold,
    EvidenceState,
    LinkedIncident,
    may_see,
    visible_incident_ids,
)

ATTACHED = datetime(2026, 3, 1, tzinfo=UTC)
RETAIN_UNTIL = ATTACHED + timedelta(days=365)
BEFORE_END = RETAIN_UNTIL - timedelta(seconds=1)
AFTER_END = RETAIN_UNTIL + timedelta(days=1)


def evidence(**changes: object) -> Evidence:
    base = Evidence(
        evidence_id="evd1",
        tenant_id="acme",
        sha256="ab" * 32,
        size_bytes=10,
        media_type="video/mp4",
        file_name="clip.mp4",
        description="",
        retain_until=RETAIN_UNTIL,
        attached_by="key-acme",
        create_time=ATTACHED,
        blob_name="0" * 32,
        sealed_key=SealedKey("k1", b"wrapped"),
        ledger_entry_id=uuid.uuid4(),
        incidents=(
            LinkedIncident("inc-bj", (Route("cyberspace", "110105"),)),
            LinkedIncident("inc-sh", (Route("cyberspace", "310101"),)),
        ),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def hold(**changes: object) -> EvidenceHold:
    base = EvidenceHold(
        hold_id="hold1",
        evidence_id="evd1",
        request_id="r1",
        request_hash=b"",
        reason="investigation",
        placed_by="op",
        placed_by_role=Role.OPERATOR,
        create_time=ATTACHED,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class TestState:
    @pytest.mark.parametrize(
        ("holds", "now", "state"),
        [
            ((), BEFORE_END, EvidenceState.PRESERVED),
            ((hold(),), BEFORE_END, EvidenceState.PRESERVED),
            ((), RETAIN_UNTIL, EvidenceState.RELEASABLE),
            ((), AFTER_END, EvidenceState.RELEASABLE),
            ((hold(),), AFTER_END, EvidenceState.HELD),
            ((hold(until_time=AFTER_END + timedelta(days=1)),), AFTER_END, EvidenceState.HELD),
            ((hold(until_time=AFTER_END),), AFTER_END, EvidenceState.RELEASABLE),
            ((hold(lift_time=BEFORE_END),), AFTER_END, EvidenceState.RELEASABLE),
            ((hold(lift_time=BEFORE_END), hold(hold_id="hold2")), AFTER_END, EvidenceState.HELD),
        ],
        ids=[
            "within-period",
            "within-period-held",
            "period-ends",
            "after-period",
            "held-until-lifted",
            "held-until-later",
            "hold-lapsed",
            "hold-lifted",
            "one-of-two-lifted",
        ],
    )
    def test_state_at_an_instant(self, holds: tuple[EvidenceHold, ...], now: datetime, state: EvidenceState) -> None:
        assert evidence(holds=holds).state(now) is state

    def test_released_evidence_is_released_whatever_else_holds(self) -> None:
        released = evidence(holds=(hold(),), release_time=AFTER_END, sealed_key=None)
        assert released.state(BEFORE_END) is EvidenceState.RELEASED


class TestReleaseBlockers:
    def test_nothing_blocks_after_the_period_without_holds(self) -> None:
        assert evidence().release_blockers(AFTER_END) == []

    def test_the_period_and_each_active_hold_are_named(self) -> None:
        blockers = evidence(holds=(hold(), hold(hold_id="hold2", lift_time=ATTACHED))).release_blockers(BEFORE_END)
        assert blockers == ["it is preserved until 2027-03-01T00:00:00Z", "hold hold1 is active (until lifted)"]


def regulator(department: str, region: str) -> Principal:
    return Principal(Role.REGULATOR, "reg", regulator_scope=RegulatorScope((department,), (region,)))


class TestVisibility:
    def test_the_owning_provider_sees_it_and_another_does_not(self) -> None:
        assert may_see(Principal(Role.PROVIDER, "k", tenant_id="acme"), evidence())
        assert not may_see(Principal(Role.PROVIDER, "k", tenant_id="other"), evidence())

    def test_a_service_acting_for_the_provider_sees_what_the_provider_sees(self) -> None:
        acting = Principal(Role.SERVICE, "screening", origin=Principal(Role.PROVIDER, "k", tenant_id="acme"))
        assert may_see(acting, evidence())

    def test_a_regulator_sees_it_through_an_incident_in_scope_and_only_those_incident_ids(self) -> None:
        beijing = regulator("cyberspace", "110000")
        assert may_see(beijing, evidence())
        assert visible_incident_ids(beijing, evidence()) == ("inc-bj",)
        assert not may_see(regulator("cyberspace", "440000"), evidence())
        assert not may_see(regulator("public_security", "000000"), evidence())

    def test_operators_see_everything(self) -> None:
        operator = Principal(Role.OPERATOR, "op")
        assert may_see(operator, evidence())
        assert visible_incident_ids(operator, evidence()) == ("inc-bj", "inc-sh")
