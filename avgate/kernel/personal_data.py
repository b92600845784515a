"""Recognising personal data in clear: resident ID numbers, mainland mobile numbers, credit codes.

One home for the patterns every guard uses: the ledger refuses entries that
hold them, field rules refuse them in free text and identifiers, and the
gateway never lets a caller's request id that looks like one into a token.
Patterns are bounded by anything but ASCII letters and digits, so hex ids
(uuids, hashes) do not trip them, while a number inside Chinese text still
does. Mobile numbers are also caught with a 0086 prefix or written in groups
("138 0013 8000"); a Unified Social Credit Code only when its GB 32100 check
character holds, so upper-case ids rarely trip it.
"""

from __future__ import annotations

import re

RESIDENT_ID = re.compile(
    r"(?<![0-9A-Za-z])[1-9][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
    r"[0-9]{3}[0-9Xx](?![0-9A-Za-z])"
)
MOBILE = re.compile(r"(?<![0-9A-Za-z])(?:\+?86)?1[3-9][0-9]{9}(?![0-9A-Za-z])")
# What the eleven-digit scan misses: "0086" glued to the number, and numbers written in groups.
MOBILE_WRITTEN = re.compile(
    r"(?<![0-9A-Za-z])(?:(?:\+|00)?86[ -]?)?1[3-9][0-9](?:[ -][0-9]{4}[ -][0-9]{4}|[0-9]{8})(?![0-9A-Za-z])"
)
# GB 32100 credit codes: 18 characters over the 31-character alphabet, a check character by weights 3^i mod 31.
CREDIT_CODE_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
CREDIT_CODE = re.compile(r"(?<![0-9A-Za-z])[1-9ANY][0-9A-HJ-NPQRTUWXY]{17}(?![0-9A-Za-z])")

_ID_OR_MOBILE = re.compile(f"{RESIDENT_ID.pattern}|{MOBILE.pattern}")
_ELEVEN_DIGITS = re.compile(r"[0-9]{11}")


def is_credit_code(code: str) -> bool:
    """Whether an 18-character code over the GB 32100 alphabet has a valid check character."""
    total = sum(CREDIT_CODE_ALPHABET.index(c) * pow(3, i, 31) for i, c in enumerate(code[:17]))
    return code[17] == CREDIT_CODE_ALPHABET[(31 - total % 31) % 31]


def contains_personal_data(text: str) -> bool:
    """Whether text holds what looks like a resident ID number, a mainland mobile number or a credit code."""
    # ID and plain mobile numbers hold a run of eleven digits; the cheap scan spares the full patterns on most text.
    if _ELEVEN_DIGITS.search(text) is not None and _ID_OR_MOBILE.search(text) is not None:
        return True
    if MOBILE_WRITTEN.search(text) is not None:
        return True
    return any(is_credit_code(m.group()) for m in CREDIT_CODE.finditer(text))
