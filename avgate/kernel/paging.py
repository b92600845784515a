"""Cursor pagination shared by every List RPC: page sizes and opaque page tokens.

A token carries the last item's (create time, id), the keyset the stores
order by, so a page continues exactly after the previous one even while
items are added.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from avgate.kernel.errors import FieldChecker, FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

Cursor = tuple[datetime, str]


def check_page_size(check: FieldChecker, page_size: int) -> None:
    check.require(0 <= page_size <= MAX_PAGE_SIZE, "page.page_size", f"must be between 0 and {MAX_PAGE_SIZE}")


def page_limit(page_size: int) -> int:
    """The number of items a page holds (0 asks for the default)."""
    return page_size or DEFAULT_PAGE_SIZE


def encode_page_token(create_time: datetime, item_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([create_time.isoformat(), item_id]).encode()).decode()


def decode_page_token(token: str) -> Cursor:
    try:
        created, item_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return datetime.fromisoformat(created), str(item_id)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise InvalidArgument(FieldViolation("page.page_token", "not a token this API issued")) from exc
