"""Feed cursors: where a reader is, opaque to it, exact to resume from.

A cursor names a position in feed order — the (txid, id) of the last
incident item — plus the size of the last tree head the reader was given,
and whether the item it names is that tree head. Resuming after a cursor
continues with the first incident item after (txid, id) and with tree heads
larger than tree_size; nothing is repeated and nothing skipped.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from avgate.kernel.errors import FieldViolation, InvalidArgument

_VERSION = "f1"


@dataclass(frozen=True, order=True)
class FeedCursor:
    txid: int = 0
    item_id: int = 0
    tree_size: int = 0
    is_head: bool = False

    def encode(self) -> str:
        raw = f"{_VERSION}:{self.txid}:{self.item_id}:{self.tree_size}:{'h' if self.is_head else 'i'}"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, field: str = "cursor") -> FeedCursor:
        """The cursor in `text` ("" is the start of the feed); InvalidArgument naming `field` otherwise."""
        if not text:
            return cls()
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
            version, txid, item_id, tree_size, kind = raw.split(":")
            if version != _VERSION or kind not in ("h", "i"):
                raise ValueError(raw)
            cursor = cls(int(txid), int(item_id), int(tree_size), kind == "h")
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise InvalidArgument(FieldViolation(field, "not a cursor this feed handed out")) from None
        if min(cursor.txid, cursor.item_id, cursor.tree_size) < 0 or (cursor.is_head and cursor.tree_size == 0):
            raise InvalidArgument(FieldViolation(field, "not a cursor this feed handed out"))
        return cursor

    @property
    def position(self) -> tuple[int, int]:
        return (self.txid, self.item_id)
