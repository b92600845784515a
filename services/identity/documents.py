"""Identity documents: format and check-character rules, and normalised values.

Each `parse_*` function takes the raw input and the request field it came
from (for example "individual.resident_id_number") and returns a frozen value
object with the normalised value, or raises InvalidArgument with one
FieldViolation(field, rule). The rule says what is wrong and never repeats
the value: these are personal data (PIPL), and error messages end up in logs.

Sources and decisions:

- Resident ID number, GB 11643-1999: 6-digit address code, 8-digit birth
  date (GB/T 7408), 3-digit sequence (odd men, even women), check character
  by ISO 7064 MOD 11-2 (weights 7,9,10,5,8,4,2,1,6,3,7,9,10,5,8,4,2 over the
  17 digits; the remainder indexes "10X98765432"). A lower-case x is taken
  and normalised to X. The address code may be any code GB/T 2260 ever
  assigned: people keep their number when their county is renamed or merged.
  We read python-stdnum's historical table (stdnum/cn/loc.dat, through its
  `numdb` lookup, the same one stdnum.cn.ric uses). Unlike stdnum we do not
  also require that the county existed in the birth year: the first cards
  (1984 on) were numbered by the place of registration, not of birth, so the
  year test rejects real people; the authoritative verifier is the check of
  record. The table's province-level entries (for example 110000) count.
- Residence permits for Hong Kong, Macao and Taiwan residents (State Council
  regulations of 2018): GB 11643 numbers whose address code is 810000,
  820000 or 830000. (830000 is not in GB/T 2260; it is added here.)
- Foreigners' permanent residence ID, 2023 edition (National Immigration
  Administration, issued from 2023-12-01, "新版外国人永久居留身份证机读信息规则"):
  18 characters built like GB 11643 numbers with the same MOD 11-2 check
  character: "9" (the foreigner marker; citizens' numbers start 1-8), a
  2-digit province code of the accepting authority, a 3-digit numeric
  nationality code (GB/T 2659, the ISO 3166-1 numeric codes that replaced the
  old card's three letters), the birth date, a 3-digit sequence and the check
  character. We check the marker, that the province code is a GB/T 2260
  province, the date and the check character; the nationality code is taken
  as three digits other than 000 (no ISO 3166 numeric table is in the lock).
- 15-digit numbers (first-generation cards, no check character, 2-digit
  year) are refused with "an 18-character number is required": the
  second-generation number has been the only valid one since 2013, and a
  15-digit number cannot be format-checked.
- Birth dates must be real calendar dates, not before 1900-01-01 and not
  after the reference day (today unless the caller passes one).
- Unified Social Credit Code, GB 32100-2015: 18 characters over
  "0123456789ABCDEFGHJKLMNPQRTUWXY" (no I, O, S, V, Z); character 1 the
  registration authority and character 2 the organisation category, checked
  against the combinations the code centre publishes (USCC_CATEGORIES);
  characters 3-8 the registering authority's GB/T 2260 code (checked to be
  six digits whose province part is a GB/T 2260 province or "10", the code of
  national-level authorities: the full table is not used because registration
  authorities' codes are not always county codes); characters 9-17 the
  GB 11714 organisation code with its own check character; character 18 the
  check character with weights 3^i mod 31. Lower case is normalised; spaces
  and hyphens are dropped.
- Legacy organisation code, GB 11714-1997: 8 characters over 0-9 and A-Z
  plus a check character: weights 3,7,9,10,5,8,4,2, C = 11 - sum mod 11,
  with 10 written "X" and 11 written "0". Written with or without a hyphen
  before the check character.
- Mobile numbers: the permissive rule 1[3-9] followed by nine digits (the
  MIIT's allocated segments 13x-19x change every few years; refusing a
  newly allocated segment would lock real users out, while the SMS code
  proves the number anyway). A "+86", "0086" or "86" prefix and spaces or
  hyphens are accepted; the value is normalised to E.164 "+86...".
- Names: NFC-normalised, surrounding spaces trimmed, inner runs of spaces
  collapsed; individual names 1 to 100 characters (the identity contract's
  bound) of letters (any script, which covers Han characters and foreign
  names), combining marks, spaces and the name separators "·" (U+00B7),
  "•" (U+2022), "・" (U+30FB), "\uff0e" (fullwidth stop), "." and "-" used in minority and
  transliterated foreign names; organisation names 1 to 200 characters of
  anything printable.
"""

from __future__ import annotations

import enum
import functools
import re
import unicodedata
from dataclasses import dataclass
from datetime import date

from avgate.kernel.errors import FieldViolation, InvalidArgument

RIC_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
RIC_CHECK_MAP = "10X98765432"
RESIDENCE_PERMIT_REGIONS = {"810000": "hong_kong", "820000": "macao", "830000": "taiwan"}
EARLIEST_BIRTH_DATE = date(1900, 1, 1)

USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
USCC_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))
# Registration authority (character 1) -> organisation categories (character 2), GB 32100-2015
# with the later assignments (A: the Central Military Commission's establishment office; N: agriculture).
USCC_CATEGORIES: dict[str, frozenset[str]] = {
    "1": frozenset("1239"),  # establishment: organs, public institutions, mass organisations, other
    "2": frozenset("19"),  # foreign affairs: resident foreign news agencies, other
    "3": frozenset("123459"),  # justice: law firms, foreign law firms' offices, forensics, arbitration, notaries, ...
    "4": frozenset("19"),  # culture: foreign cultural centres, other
    "5": frozenset("1239"),  # civil affairs: social organisations, private non-enterprise units, foundations, other
    "6": frozenset("129"),  # tourism: foreign and HK/Macao/Taiwan tourism offices, other
    "7": frozenset("129"),  # religion: places of worship, religious schools, other
    "8": frozenset("19"),  # trade unions: grassroots unions, other
    "9": frozenset("123"),  # market regulation: enterprises, individual businesses, farmers' cooperatives
    "A": frozenset("19"),  # military establishment office: military public institutions, other
    "N": frozenset("1239"),  # agriculture: group, village, township collective economic organisations, other
    "Y": frozenset("1"),  # other authorities: one category
}
ORG_CODE_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
_ORG_CODE_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

MAX_INDIVIDUAL_NAME = 100
MAX_ORGANIZATION_NAME = 200
_NAME_SEPARATORS = frozenset("·•・\uff0e.-' ")
_SPACES = re.compile(r"\s+")
_MOBILE = re.compile(r"1[3-9][0-9]{9}")


class DocumentKind(enum.StrEnum):
    """Which document a resident-ID-shaped number is."""

    RESIDENT_ID = "resident_id"
    """A mainland resident identity card number (GB 11643)."""
    RESIDENCE_PERMIT = "residence_permit"
    """A residence permit of a Hong Kong, Macao or Taiwan resident (810000/820000/830000)."""
    FOREIGN_PERMANENT_RESIDENCE = "foreign_permanent_residence"
    """A foreigner's permanent residence ID, 2023 edition (starts with 9)."""


class Sex(enum.StrEnum):
    MALE = "male"
    FEMALE = "female"


@dataclass(frozen=True)
class ResidentIdNumber:
    """A valid 18-character resident ID number, normalised (upper-case X)."""

    value: str
    kind: DocumentKind
    region_code: str
    """The 6-digit address code; for a foreigner's ID "9" + province + nationality."""
    birth_date: date
    sex: Sex
    nationality_code: str | None = None
    """The 3-digit numeric nationality code of a foreigner's ID; None otherwise."""

    def __repr__(self) -> str:  # never print the number (logs, tracebacks)
        return f"ResidentIdNumber(kind={self.kind.value}, value=<redacted>)"


@dataclass(frozen=True)
class CreditCode:
    """A valid Unified Social Credit Code, normalised."""

    value: str
    authority: str
    category: str
    region_code: str
    organization_code: str
    """Characters 9-17: the GB 11714 organisation code, check character included."""

    def __repr__(self) -> str:
        return f"CreditCode(authority={self.authority}, category={self.category}, value=<redacted>)"


@dataclass(frozen=True)
class OrganizationCode:
    """A valid legacy 9-character organisation code, normalised without hyphen."""

    value: str

    def __repr__(self) -> str:
        return "OrganizationCode(value=<redacted>)"


@dataclass(frozen=True)
class MobileNumber:
    """A mainland mobile number in E.164 form, "+86" and 11 digits."""

    e164: str

    @property
    def national(self) -> str:
        return self.e164[3:]

    def __repr__(self) -> str:
        return "MobileNumber(value=<redacted>)"


@dataclass(frozen=True)
class PersonName:
    """An individual's or organisation's name, NFC-normalised and trimmed."""

    value: str

    def __repr__(self) -> str:
        return "PersonName(value=<redacted>)"


def _invalid(field: str, rule: str) -> InvalidArgument:
    return InvalidArgument(FieldViolation(field, rule))


# --------------------------------------------------------------------------- resident ID numbers


def ric_check_character(body: str) -> str:
    """The MOD 11-2 check character of the first 17 digits."""
    total = sum(int(c) * w for c, w in zip(body, RIC_WEIGHTS, strict=True))
    return RIC_CHECK_MAP[total % 11]


@functools.cache
def _region_table() -> object:
    from stdnum import numdb

    return numdb.get("cn/loc")


def region_ever_assigned(code: str) -> bool:
    """Whether a 6-digit code is one GB/T 2260 ever assigned (renamed and abolished codes included)."""
    if len(code) != 6 or not code.isdigit():
        return False
    return any("county" in props for _, props in _region_table().info(code))  # type: ignore[attr-defined]


def is_province(code: str) -> bool:
    """Whether a 2-digit code is a province-level division of GB/T 2260."""
    if len(code) != 2 or not code.isdigit():
        return False
    return any("province" in props for _, props in _region_table().info(code + "0000"))  # type: ignore[attr-defined]


def _birth_date(digits: str, field: str, today: date) -> date:
    try:
        born = date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        raise _invalid(field, "the birth date is not a calendar date") from None
    if born < EARLIEST_BIRTH_DATE:
        raise _invalid(field, "the birth date is before 1900")
    if born > today:
        raise _invalid(field, "the birth date is in the future")
    return born


def parse_resident_id(raw: str, field: str, *, today: date | None = None) -> ResidentIdNumber:
    """A resident ID number, residence permit number or foreigner's permanent residence ID."""
    today = today or date.today()
    value = raw.strip().upper() if isinstance(raw, str) else ""
    if not value:
        raise _invalid(field, "required")
    if len(value) == 15 and value.isdigit():
        raise _invalid(field, "an 18-character number is required (15-digit first-generation numbers are not accepted)")
    if len(value) != 18:
        raise _invalid(field, "must be 18 characters")
    body, check = value[:17], value[17]
    if not (body.isascii() and body.isdigit()) or check not in "0123456789X":
        raise _invalid(field, "must be 17 digits followed by a digit or X")
    if value[0] == "9":
        kind = DocumentKind.FOREIGN_PERMANENT_RESIDENCE
        if not is_province(value[1:3]):
            raise _invalid(field, "the province code is not a GB/T 2260 province")
        if value[3:6] == "000":
            raise _invalid(field, "the nationality code is not a country code")
        nationality: str | None = value[3:6]
    else:
        nationality = None
        region = value[:6]
        if region in RESIDENCE_PERMIT_REGIONS:
            kind = DocumentKind.RESIDENCE_PERMIT
        elif region_ever_assigned(region):
            kind = DocumentKind.RESIDENT_ID
        else:
            raise _invalid(field, "the region code is not a GB/T 2260 code")
    born = _birth_date(value[6:14], field, today)
    if check != ric_check_character(body):
        raise _invalid(field, "the check character does not match (GB 11643 MOD 11-2)")
    return ResidentIdNumber(
        value=value,
        kind=kind,
        region_code=value[:6],
        birth_date=born,
        sex=Sex.MALE if int(value[16]) % 2 else Sex.FEMALE,
        nationality_code=nationality,
    )


# --------------------------------------------------------------------------- age


def age_on(birth_date: date, on_date: date) -> int:
    """Completed years on `on_date`. Someone born on 29 February turns a year
    older on 1 March in common years (the day after 28 February), the reading
    Chinese practice and most legal systems take."""
    years = on_date.year - birth_date.year
    if (on_date.month, on_date.day) < (birth_date.month, birth_date.day):
        years -= 1
    return years


def is_minor(birth_date: date, on_date: date) -> bool:
    """Under 18 (Minors Protection Law Art. 2)."""
    return age_on(birth_date, on_date) < 18


def under_14(birth_date: date, on_date: date) -> bool:
    """Under 14: processing needs a guardian's consent (PIPL Art. 31)."""
    return age_on(birth_date, on_date) < 14


# --------------------------------------------------------------------------- organisation codes


def org_code_check_character(body: str) -> str:
    """The GB 11714 check character of 8 code characters."""
    total = sum(_ORG_CODE_ALPHABET.index(c) * w for c, w in zip(body, ORG_CODE_WEIGHTS, strict=True))
    check = 11 - total % 11
    return {10: "X", 11: "0"}.get(check, str(check))


def _org_code_ok(code: str) -> bool:
    body, check = code[:8], code[8]
    return all(c in _ORG_CODE_ALPHABET for c in body) and org_code_check_character(body) == check


def parse_organization_code(raw: str, field: str) -> OrganizationCode:
    """A legacy 9-character organisation code (GB 11714), hyphen before the check character optional."""
    value = raw.strip().upper() if isinstance(raw, str) else ""
    if not value:
        raise _invalid(field, "required")
    if len(value) == 10 and value[8] == "-":
        value = value[:8] + value[9]
    if len(value) != 9:
        raise _invalid(field, "must be 9 characters (8 and a check character)")
    if not value.isascii() or not all(c in _ORG_CODE_ALPHABET for c in value[:8]) or value[8] not in "0123456789X":
        raise _invalid(field, "must be 8 digits or letters followed by a digit or X")
    if not _org_code_ok(value):
        raise _invalid(field, "the check character does not match (GB 11714)")
    return OrganizationCode(value)


def uscc_check_character(body: str) -> str:
    """The GB 32100 check character of the first 17 characters."""
    total = sum(USCC_ALPHABET.index(c) * w for c, w in zip(body, USCC_WEIGHTS, strict=True))
    return USCC_ALPHABET[(31 - total % 31) % 31]


def parse_credit_code(raw: str, field: str) -> CreditCode:
    """A Unified Social Credit Code (GB 32100-2015)."""
    value = re.sub(r"[\s-]", "", raw).upper() if isinstance(raw, str) else ""
    if not value:
        raise _invalid(field, "required")
    if len(value) != 18:
        raise _invalid(field, "must be 18 characters")
    if not all(c in USCC_ALPHABET for c in value):
        raise _invalid(field, "only digits and the letters A-Y without I, O, S, V are allowed")
    authority, category = value[0], value[1]
    if authority not in USCC_CATEGORIES:
        raise _invalid(field, "the registration authority code is not defined (GB 32100)")
    if category not in USCC_CATEGORIES[authority]:
        raise _invalid(field, "the organisation category is not defined for this registration authority (GB 32100)")
    region = value[2:8]
    if not region.isdigit() or not (region[:2] == "10" or is_province(region[:2])):
        raise _invalid(field, "the region code is not a GB/T 2260 code")
    if not _org_code_ok(value[8:17]):
        raise _invalid(field, "the organisation code's check character does not match (GB 11714)")
    if value[17] != uscc_check_character(value[:17]):
        raise _invalid(field, "the check character does not match (GB 32100)")
    return CreditCode(value, authority, category, region, value[8:17])


# --------------------------------------------------------------------------- mobile numbers


def parse_mobile(raw: str, field: str) -> MobileNumber:
    """A mainland mobile number, "+86"/"0086"/"86" optional, spaces and hyphens allowed."""
    value = re.sub(r"[\s-]", "", raw) if isinstance(raw, str) else ""
    if not value:
        raise _invalid(field, "required")
    for prefix in ("+86", "0086"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
            break
    else:
        if len(value) == 13 and value.startswith("86"):
            value = value[2:]
    if not (value.isascii() and _MOBILE.fullmatch(value)):
        raise _invalid(field, "must be a mainland mobile number: 11 digits starting 13 to 19, +86 optional")
    return MobileNumber("+86" + value)


# --------------------------------------------------------------------------- names


def _normalise_name(raw: str) -> str:
    return _SPACES.sub(" ", unicodedata.normalize("NFC", raw)).strip()


def parse_individual_name(raw: str, field: str) -> PersonName:
    """A natural person's legal name (Han, minority or foreign)."""
    value = _normalise_name(raw) if isinstance(raw, str) else ""
    if not value:
        raise _invalid(field, "required")
    if len(value) > MAX_INDIVIDUAL_NAME:
        raise _invalid(field, f"must be at most {MAX_INDIVIDUAL_NAME} characters")
    for c in value:
        if c in _NAME_SEPARATORS:
            continue
        if unicodedata.category(c)[0] not in "LM":
            raise _invalid(field, "only letters, spaces and name separators (· . - ') are allowed")
    if all(c in _NAME_SEPARATORS for c in value):
        raise _invalid(field, "must contain a letter")
    return PersonName(value)


def parse_organization_name(raw: str, field: str) -> PersonName:
    """A registered organisation name."""
    value = _normalise_name(raw) if isinstance(raw, str) else ""
    if not value:
        raise _invalid(field, "required")
    if len(value) > MAX_ORGANIZATION_NAME:
        raise _invalid(field, f"must be at most {MAX_ORGANIZATION_NAME} characters")
    if any(unicodedata.category(c)[0] == "C" for c in value):
        raise _invalid(field, "must not contain control or unassigned characters")
    return PersonName(value)
