"""Identity documents: GB 11643 numbers, GB 32100 / GB 11714 codes, mobile numbers, names.

Every refusal is an InvalidArgument naming the caller's field and a rule, and
no message repeats the input.
"""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum.cn import ric as stdnum_ric
from stdnum.cn import uscc as stdnum_uscc

from avgate.kernel.errors import InvalidArgument
from services.identity.documents import (
    USCC_ALPHABET,
    USCC_CATEGORIES,
    DocumentKind,
    Sex,
    age_on,
    is_minor,
    org_code_check_character,
    parse_credit_code,
    parse_individual_name,
    parse_mobile,
    parse_organization_code,
    parse_organization_name,
    parse_resident_id,
    ric_check_character,
    under_14,
    uscc_check_character,
)

TODAY = date(2025, 6, 1)
FIELD = "individual.resident_id_number"


def ric(body17: str) -> str:
    return body17 + ric_check_character(body17)


def refused(call, raw: str, field: str) -> str:  # type: ignore[no-untyped-def]
    """The rule of the single violation, after checking the field and that nothing echoes the input."""
    with pytest.raises(InvalidArgument) as error:
        call(raw)
    (violation,) = error.value.violations
    assert violation.field == field
    compact = raw.strip().replace(" ", "").replace("-", "")
    for text in (str(error.value), error.value.message, violation.description):
        if len(compact) >= 4:
            assert compact not in text and compact.upper() not in text
    return violation.description


def refused_id(raw: str) -> str:
    return refused(lambda v: parse_resident_id(v, FIELD, today=TODAY), raw, FIELD)


class TestResidentIdNumbers:
    @pytest.mark.parametrize(
        ("number", "kind", "born", "sex"),
        [
            ("11010519491231002X", DocumentKind.RESIDENT_ID, date(1949, 12, 31), Sex.FEMALE),
            ("11010519491231002x", DocumentKind.RESIDENT_ID, date(1949, 12, 31), Sex.FEMALE),
            ("360426199101010071", DocumentKind.RESIDENT_ID, date(1991, 1, 1), Sex.MALE),
            (ric("44030020000229123"), DocumentKind.RESIDENT_ID, date(2000, 2, 29), Sex.MALE),
            (ric("81000019900101001"), DocumentKind.RESIDENCE_PERMIT, date(1990, 1, 1), Sex.MALE),
            (ric("82000019900101002"), DocumentKind.RESIDENCE_PERMIT, date(1990, 1, 1), Sex.FEMALE),
            (ric("83000019900101003"), DocumentKind.RESIDENCE_PERMIT, date(1990, 1, 1), Sex.MALE),
            (ric("93184019851231004"), DocumentKind.FOREIGN_PERMANENT_RESIDENCE, date(1985, 12, 31), Sex.FEMALE),
        ],
        ids=["published-x", "lower-x", "stdnum-doc", "leap-day", "hong-kong", "macao", "taiwan", "foreigner-2023"],
    )
    def test_valid_numbers_are_normalised_with_their_facts(
        self, number: str, kind: DocumentKind, born: date, sex: Sex
    ) -> None:
        parsed = parse_resident_id(f"  {number} ", FIELD, today=TODAY)
        assert parsed.value == number.upper()
        assert parsed.kind is kind
        assert parsed.birth_date == born
        assert parsed.sex is sex
        assert parsed.region_code == number[:6]

    def test_a_foreigners_id_carries_its_nationality_code(self) -> None:
        parsed = parse_resident_id(ric("93184019851231004"), FIELD, today=TODAY)
        assert parsed.nationality_code == "840"

    @pytest.mark.parametrize(
        "body",
        ["11010319900101001", "34260119600101001", "11011019800101001"],
        ids=["chongwen-abolished-2010", "chaohu-1982-1999-born-before", "yanshan-abolished-1986"],
    )
    def test_numbers_of_renamed_or_abolished_regions_stay_valid(self, body: str) -> None:
        assert parse_resident_id(ric(body), FIELD, today=TODAY).kind is DocumentKind.RESIDENT_ID

    def test_a_region_stdnum_rejects_for_the_birth_year_is_accepted(self) -> None:
        # 342601 existed 1982-1999; a 1960-born person registered there in the 1980s keeps it.
        number = ric("34260119600101001")
        assert not stdnum_ric.is_valid(number)
        parse_resident_id(number, FIELD, today=TODAY)

    @pytest.mark.parametrize(
        ("number", "rule"),
        [
            ("11010519491231002", "18 characters"),
            ("110105194912310021X", "18 characters"),
            ("110105491231002", "18-character number is required"),
            ("11010519491231002Y", "17 digits followed by a digit or X"),
            ("1101051949123100A2", "17 digits followed by a digit or X"),
            ("110105194912310021", "check character"),
            (ric("11010520230229001"), "not a calendar date"),
            (ric("11010520230230001"), "not a calendar date"),
            (ric("11010519901301001"), "not a calendar date"),
            (ric("11010518991231001"), "before 1900"),
            (ric("11010520250602001"), "in the future"),
            (ric("99999919900101001"), "province code"),
            (ric("11999919900101001"), "region code"),
            (ric("00000019900101001"), "region code"),
            (ric("84000019900101001"), "region code"),
            (ric("91100019900101001"), "nationality code"),
            ("", "required"),
        ],
        ids=[
            "too-short",
            "too-long",
            "15-digit",
            "bad-check-letter",
            "letter-in-body",
            "wrong-check",
            "2023-02-29",
            "feb-30",
            "month-13",
            "before-1900",
            "future",
            "foreigner-unknown-province",
            "unknown-county",
            "zero-region",
            "no-such-permit",
            "foreigner-nationality-000",
            "empty",
        ],
    )
    def test_invalid_numbers_name_the_rule_without_echoing_the_number(self, number: str, rule: str) -> None:
        assert rule in refused_id(number)

    @settings(max_examples=300, deadline=None)
    @given(
        region=st.sampled_from(["110105", "440300", "110103", "810000", "830000", "650102"]),
        born=st.dates(date(1900, 1, 1), TODAY),
        sequence=st.integers(0, 999),
        position=st.integers(0, 17),
        replacement=st.sampled_from("0123456789X"),
    )
    def test_a_valid_number_with_one_character_changed_is_refused(
        self, region: str, born: date, sequence: int, position: int, replacement: str
    ) -> None:
        number = ric(f"{region}{born:%Y%m%d}{sequence:03d}")
        assert parse_resident_id(number, FIELD, today=TODAY).value == number
        assert stdnum_ric.calc_check_digit(number) == number[-1]
        if number[position] == replacement or (position < 17 and replacement == "X"):
            return
        mutated = number[:position] + replacement + number[position + 1 :]
        # MOD 11-2 detects every single-character substitution.
        with pytest.raises(InvalidArgument):
            parse_resident_id(mutated, FIELD, today=TODAY)


class TestAge:
    @pytest.mark.parametrize(
        ("born", "on", "age"),
        [
            (date(2011, 6, 1), date(2025, 5, 31), 13),
            (date(2011, 6, 1), date(2025, 6, 1), 14),
            (date(2008, 2, 29), date(2026, 2, 28), 17),
            (date(2008, 2, 29), date(2026, 3, 1), 18),
            (date(2008, 2, 29), date(2028, 2, 29), 20),
            (date(2000, 12, 31), date(2001, 1, 1), 0),
        ],
        ids=["day-before-birthday", "on-birthday", "leap-born-feb-28", "leap-born-mar-1", "leap-year", "newborn"],
    )
    def test_age_in_completed_years(self, born: date, on: date, age: int) -> None:
        assert age_on(born, on) == age

    def test_minor_and_under_14_turn_on_the_birthday(self) -> None:
        born = date(2011, 6, 1)
        assert under_14(born, date(2025, 5, 31)) and not under_14(born, date(2025, 6, 1))
        assert is_minor(born, date(2029, 5, 31)) and not is_minor(born, date(2029, 6, 1))


class TestCreditCodes:
    # Published codes (business licences shown on the companies' own sites) and stdnum's example.
    PUBLISHED = ["91110000600037341L", "914403001922038216", "91440300708461136T", "91330100716105852F"]

    @pytest.mark.parametrize("code", PUBLISHED)
    def test_published_codes_are_valid_and_agree_with_stdnum(self, code: str) -> None:
        parsed = parse_credit_code(code.lower()[:8] + " " + code[8:], "organization.unified_social_credit_code")
        assert parsed.value == code
        assert stdnum_uscc.is_valid(code)
        assert (parsed.authority, parsed.category, parsed.region_code) == (code[0], code[1], code[2:8])
        assert parsed.organization_code == code[8:17]

    @pytest.mark.parametrize(
        ("code", "rule"),
        [
            ("91110000600037341", "18 characters"),
            ("91110000600037341I", "only digits and the letters"),
            ("91110000600O37341L", "only digits and the letters"),
            ("B1110000600037341L", "registration authority"),
            ("94110000600037341L", "organisation category"),
            ("Y2110000600037341L", "organisation category"),
            ("91AB0000600037341L", "region code"),
            ("91990000600037341L", "region code"),
            ("91110000600037342L", "organisation code"),
            ("91110000600037341M", "check character"),
        ],
        ids=[
            "short",
            "letter-I",
            "letter-O",
            "unknown-authority",
            "unknown-category",
            "other-has-one-category",
            "letters-in-region",
            "unknown-province",
            "org-code-check",
            "check",
        ],
    )
    def test_invalid_codes_name_the_rule(self, code: str, rule: str) -> None:
        field = "organization.unified_social_credit_code"
        assert rule in refused(lambda v: parse_credit_code(v, field), code, field)

    @settings(max_examples=300, deadline=None)
    @given(
        authority=st.sampled_from(sorted(USCC_CATEGORIES)),
        data=st.data(),
        region=st.sampled_from(["110000", "440300", "100000", "650102"]),
        org_body=st.text(alphabet="0123456789ABCDEFGHJKLMNPQRTUWXY", min_size=8, max_size=8),
        position=st.integers(0, 17),
        replacement=st.sampled_from(USCC_ALPHABET),
    )
    def test_generated_codes_agree_with_stdnum_and_one_change_is_refused(
        self, authority: str, data: st.DataObject, region: str, org_body: str, position: int, replacement: str
    ) -> None:
        category = data.draw(st.sampled_from(sorted(USCC_CATEGORIES[authority])))
        org = org_body + org_code_check_character(org_body)
        body = authority + category + region + org
        code = body + uscc_check_character(body)
        assert stdnum_uscc.calc_check_digit(code) == code[-1]
        # stdnum wants digits in the first 8 characters, which authorities A, N and Y do not have.
        assert stdnum_uscc.is_valid(code) == code[:8].isdigit()
        assert parse_credit_code(code, "f").value == code
        if code[position] == replacement:
            return
        mutated = code[:position] + replacement + code[position + 1 :]
        assert not stdnum_uscc.is_valid(mutated)
        with pytest.raises(InvalidArgument):
            parse_credit_code(mutated, "f")


class TestLegacyOrganizationCodes:
    @pytest.mark.parametrize("code", ["600037341", "60003734-1", "192203821", "70846113-6", "71610585-2"])
    def test_codes_inside_published_credit_codes_are_valid(self, code: str) -> None:
        assert parse_organization_code(code, "organization.legacy_organization_code").value == code.replace("-", "")

    def test_check_values_ten_and_eleven_are_written_x_and_0(self) -> None:
        bodies = {org_code_check_character(f"{n:08d}") for n in range(200)}
        assert {"X", "0"} <= bodies
        x_body = next(f"{n:08d}" for n in range(200) if org_code_check_character(f"{n:08d}") == "X")
        assert parse_organization_code(x_body + "x", "f").value == x_body + "X"

    @pytest.mark.parametrize(
        ("code", "rule"),
        [("600037342", "check character"), ("6000373", "9 characters"), ("60003734*", "8 digits or letters")],
        ids=["check", "short", "bad-char"],
    )
    def test_invalid_codes_name_the_rule(self, code: str, rule: str) -> None:
        field = "organization.legacy_organization_code"
        assert rule in refused(lambda v: parse_organization_code(v, field), code, field)


class TestMobileNumbers:
    @pytest.mark.parametrize(
        "raw",
        [
            "13800138000",
            "+8613800138000",
            "+86 138 0013 8000",
            "0086-138-0013-8000",
            "8613800138000",
            " 138-0013-8000 ",
        ],
    )
    def test_accepted_forms_normalise_to_e164(self, raw: str) -> None:
        assert parse_mobile(raw, "individual.mobile").e164 == "+8613800138000"

    @pytest.mark.parametrize("segment", ["13", "14", "15", "16", "17", "18", "19"])
    def test_every_segment_13_to_19_is_accepted(self, segment: str) -> None:
        assert parse_mobile(segment + "912345678", "f").national == segment + "912345678"

    @pytest.mark.parametrize(
        "raw",
        [
            "12800138000",
            "1380013800",
            "138001380001",
            "+85213800138000",
            "1380013800O",
            "13800138000".translate({ord(d): ord(d) + 0xFEE0 for d in "0123456789"}),
            "+1 2025550143",
        ],
        ids=["segment-12", "10-digits", "12-digits", "hong-kong-prefix", "letter-o", "fullwidth", "foreign"],
    )
    def test_other_numbers_are_refused(self, raw: str) -> None:
        field = "individual.mobile"
        assert "mainland mobile number" in refused(lambda v: parse_mobile(v, field), raw, field)


class TestNames:
    @pytest.mark.parametrize(
        ("raw", "normalised"),
        [
            ("张三", "张三"),
            ("  欧阳  娜娜 ", "欧阳 娜娜"),
            ("买买提·艾力", "买买提·艾力"),
            ("John  Smith", "John Smith"),
            ("José O'Neil-Garcia", "José O'Neil-Garcia"),
            ("Jose\u0301", "José"),
        ],
        ids=["han", "spaces", "uyghur-middle-dot", "latin", "accents-apostrophe-hyphen", "nfc"],
    )
    def test_individual_names_are_normalised(self, raw: str, normalised: str) -> None:
        assert parse_individual_name(raw, "individual.name").value == normalised

    @pytest.mark.parametrize(
        ("raw", "rule"),
        [("", "required"), ("   ", "required"), ("张三3", "only letters"), ("··", "a letter"), ("张" * 101, "at most")],
        ids=["empty", "blank", "digit", "separators-only", "too-long"],
    )
    def test_invalid_individual_names(self, raw: str, rule: str) -> None:
        assert rule in refused(lambda v: parse_individual_name(v, "individual.name"), raw, "individual.name")

    def test_organisation_names(self) -> None:
        field = "organization.organization_name"
        assert (
            parse_organization_name(" 北京某某科技有限公司\uff08分公司\uff09 ", field).value
            == "北京某某科技有限公司\uff08分公司\uff09"
        )
        assert "at most 200" in refused(lambda v: parse_organization_name(v, field), "公" * 201, field)
        assert "control" in refused(lambda v: parse_organization_name(v, field), "某某\u0000公司", field)


def test_the_verification_stand_in_ships_only_valid_fictitious_documents() -> None:
    """The local stack's verifier answers from this file: every number in it must pass our own rules,
    or a local flow could never reach the authoritative level."""
    import json
    import pathlib

    import services.identity

    data = pathlib.Path(services.identity.__file__).parent / "standin_data" / "identities.jsonl"
    lines = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    assert lines
    for entry in lines:
        if "credit_code" in entry:
            parse_credit_code(entry["credit_code"], "credit_code")
        if "id_number" in entry:
            parse_resident_id(entry["id_number"], "id_number")
