"""Ledger entries: canonical bytes anyone can reproduce, and no personal data."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from avgate.kernel.canonical import canonical_json
from avgate.kernel.principal import Principal, Role
from avgate.ledger.entry import MAX_ENTRY_BYTES, LedgerEntry, PersonalDataInEntry, canonical_bytes

PROVIDER = Principal(role=Role.PROVIDER, subject="ak1", tenant_id="acme", request_id="req-1")
SCREENING = Principal(role=Role.SERVICE, subject="screening", origin=PROVIDER)


def entry(**changes: object) -> LedgerEntry:
    base: dict[str, object] = {
        "action": "enforcement.issue",
        "subject_type": "account",
        "subject_id": "user-1",
        "actor": PROVIDER,
        "legal_basis": "NAVIS-2019 Art. 14",
        "reason": "repeated violations",
        "entry_id": uuid.UUID("00000000-0000-4000-8000-000000000001"),
        "occurred_at": datetime(2026, 11, 29, 12, 0, tzinfo=UTC),
    }
    base.update(changes)
    return LedgerEntry(**base)  # type: ignore[arg-type]


class TestCanonicalBytes:
    def test_are_rfc8785_of_the_documented_fields(self) -> None:
        data = canonical_bytes(entry(data={"level": "warning", "incidents": ["inc-1"]}))
        document = json.loads(data)
        assert data == rfc8785.dumps(document)  # re-canonicalising changes nothing
        assert document == {
            "v": 1,
            "id": "00000000-0000-4000-8000-000000000001",
            "key": "00000000-0000-4000-8000-000000000001",
            "at": "2026-11-29T12:00:00.000000Z",
            "action": "enforcement.issue",
            "subject": {"type": "account", "id": "user-1"},
            "tenant": "acme",
            "actor": {"role": "provider", "subject": "ak1", "tenant": "acme", "request_id": "req-1"},
            "basis": "NAVIS-2019 Art. 14",
            "reason": "repeated violations",
            "data": {"level": "warning", "incidents": ["inc-1"]},
        }

    def test_same_entry_same_bytes(self) -> None:
        assert canonical_bytes(entry(data={"b": 1, "a": 2})) == canonical_bytes(entry(data={"a": 2, "b": 1}))

    def test_a_service_hop_keeps_the_original_principal(self) -> None:
        document = json.loads(canonical_bytes(entry(actor=SCREENING)))
        assert document["actor"]["on_behalf_of"]["subject"] == "ak1"
        assert document["tenant"] == "acme"

    def test_idempotency_key_defaults_to_the_entry_id(self) -> None:
        assert entry().key == "00000000-0000-4000-8000-000000000001"
        assert entry(idempotency_key="enforcement:42").key == "enforcement:42"


class TestPersonalData:
    @pytest.mark.parametrize(
        "text",
        ["13800138000", "+8613800138000", "用户13800138000投诉", "11010519491231002X", "身份证110105194912310021。"],
        ids=["mobile", "mobile-86", "mobile-in-chinese", "resident-id-x", "resident-id-in-chinese"],
    )
    def test_numbers_in_clear_are_refused_anywhere_in_the_entry(self, text: str) -> None:
        for changes in ({"reason": text}, {"subject_id": text}, {"data": {"note": [text]}}):
            with pytest.raises(PersonalDataInEntry) as refused:
                canonical_bytes(entry(**changes))
            assert text not in str(refused.value)

    @pytest.mark.parametrize(
        "text",
        ["138****8000", "110105********002X", "e46c0065-1c5c-4791-a574-13800138000a", "sha256:1380013800098765"],
        ids=["masked-mobile", "masked-id", "uuid-with-digits", "long-hex"],
    )
    def test_masked_values_and_hex_ids_pass(self, text: str) -> None:
        canonical_bytes(entry(reason=text))

    def test_oversize_entries_are_refused(self) -> None:
        with pytest.raises(ValueError, match="limit"):
            canonical_bytes(entry(data={"blob": "x" * MAX_ENTRY_BYTES}))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


class TestCanonicalJson:
    @settings(max_examples=400, deadline=None)
    @given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
    def test_equals_the_rfc8785_reference_for_any_document(self, document: dict[str, object]) -> None:
        try:
            expected = rfc8785.dumps(document)
        except (rfc8785.CanonicalizationError, ValueError):
            # The reference refuses it (lone surrogates, infinities): so must we, never answer other bytes.
            with pytest.raises((rfc8785.CanonicalizationError, ValueError)):
                canonical_json(document)
            return
        assert canonical_json(document) == expected

    @pytest.mark.parametrize(
        "document",
        [
            {"\U0001f600": 1, "\uffff": 2},
            {"n": 1.5},
            {"big": 2**60},
            {"e": "\u2028\x1f\x7f"},
            {"s": "\ud800"},
            {"\udfff": 1},
            {"inf": float("inf")},
        ],
        ids=["astral-keys", "float", "beyond-2**53", "odd-characters", "lone-surrogate", "lone-surrogate-key", "inf"],
    )
    def test_known_differences_between_python_and_rfc8785_are_handled(self, document: dict[str, object]) -> None:
        try:
            expected = rfc8785.dumps(document)
        except (rfc8785.CanonicalizationError, ValueError):
            with pytest.raises((rfc8785.CanonicalizationError, ValueError)):
                canonical_json(document)
            return
        assert canonical_json(document) == expected
