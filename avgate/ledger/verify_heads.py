"""The signed side of `avgate ledger verify`: the log's keys, its stored heads, the heads a
regulator saved, and the archive rows — everything checked before the pass over the entries.

A head counts as signed (`Head.signed`) when its checkpoint opens with a trusted (or
published) key named like the log's origin that was valid when the head was signed;
`SignedHeads.limit` is the largest size some valid signature vouches for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from avgate.ledger.checkpoint import (
    Checkpoint,
    InvalidSignatureError,
    NoteError,
    NoteVerifier,
    UnverifiedNoteError,
    open_note,
    parse_unverified,
)
from avgate.ledger.verify_report import (
    ARCHIVE_UNCOVERED,
    BAD_SIGNATURE,
    HEAD_ORDER,
    HEAD_ROW_MISMATCH,
    KEY_NOT_YET_VALID,
    ORIGIN_MISMATCH,
    SAVED_HEAD_INVALID,
    SIGNING_KEY_INVALID,
    UNKNOWN_KEY,
    Problem,
    ProblemCollector,
)
from avgate.ledger.verify_sql import fetch_rows


@dataclass
class Head:
    """A row of ledger.heads and what its checkpoint says."""

    size: int
    root_hash: bytes
    note: bytes
    key_name: str
    signed_at: datetime
    checkpoint: Checkpoint | None = None
    """Parsed from the note's body (signature checked separately)."""
    signed: bool = False
    """Opened with a trusted/published key named like the origin, valid at signed_at."""


@dataclass
class SavedHead:
    """A signed head a regulator kept (`position` in the `saved_heads` given) that opened."""

    position: int
    checkpoint: Checkpoint


def parse_unverified_or_none(note: bytes) -> Checkpoint | None:
    """The checkpoint a note's body claims, signature unchecked; None when it does not parse."""
    try:
        return parse_unverified(note)
    except NoteError:
        return None


def open_signed(note: bytes, verifiers: Sequence[NoteVerifier]) -> tuple[Checkpoint, list[tuple[str, int]]]:
    """Opens a checkpoint; returns it and the (name, key hash) of the log's verified signatures."""
    body, signatures = open_note(note, verifiers)
    checkpoint = Checkpoint.parse(body)
    log_keys = [(s.name, s.key_hash) for s in signatures if s.verified and s.name == checkpoint.origin]
    if not log_keys:
        raise UnverifiedNoteError(
            f"no verified signature by a key named like the origin {checkpoint.origin!r}", signatures
        )
    return checkpoint, log_keys


class SignedHeads:
    """The keys, heads, saved heads and archives of one verification, checked in that order."""

    def __init__(
        self, conn: psycopg.AsyncConnection[Any], trusted: Sequence[NoteVerifier] | None, out: ProblemCollector
    ) -> None:
        self.conn = conn
        self.trusted = list(trusted) if trusted is not None else None
        self.out = out
        self.heads: list[Head] = []
        self.saved: list[SavedHead] = []
        self.origin: str | None = None
        self.limit = 0
        """The largest size vouched for by a valid signature (stored or saved head)."""

    async def keys(self) -> tuple[list[NoteVerifier], dict[tuple[str, int], datetime]]:
        """The verifiers to open heads with (trusted, else published) and each published key's valid_from."""
        rows = await fetch_rows(
            self.conn, "select key_id, vkey, valid_from from ledger.signing_keys order by key_id", ()
        )
        published: list[NoteVerifier] = []
        valid_from: dict[tuple[str, int], datetime] = {}
        for key_id, vkey, since in rows:
            try:
                verifier = NoteVerifier.from_vkey(vkey)
            except (NoteError, TypeError) as exc:
                self.out.add(Problem(SIGNING_KEY_INVALID, f"ledger.signing_keys key_id {key_id}: {exc}"))
                continue
            published.append(verifier)
            ident = (verifier.name, verifier.key_hash)
            if ident not in valid_from or since < valid_from[ident]:
                valid_from[ident] = since
        return (self.trusted if self.trusted is not None else published), valid_from

    async def load_heads(self, verifiers: list[NoteVerifier], valid_from: dict[tuple[str, int], datetime]) -> None:
        rows = await fetch_rows(
            self.conn,
            "select tree_size, root_hash, checkpoint, key_name, signed_at from ledger.heads order by tree_size",
            (),
        )
        out = self.out
        for size, root_hash, note, key_name, signed_at in rows:
            head = Head(int(size), bytes(root_hash), bytes(note), key_name, signed_at)
            self.heads.append(head)
            try:
                checkpoint, log_keys = open_signed(head.note, verifiers)
            except InvalidSignatureError as exc:
                head.checkpoint = parse_unverified_or_none(head.note)
                out.add(Problem(BAD_SIGNATURE, f"head {head.size}: {exc}", tree_size=head.size))
            except UnverifiedNoteError as exc:
                head.checkpoint = parse_unverified_or_none(head.note)
                whose = "trusted" if self.trusted is not None else "published"
                out.add(
                    Problem(
                        UNKNOWN_KEY, f"head {head.size} is not signed by a {whose} log key: {exc}", tree_size=head.size
                    )
                )
            except NoteError as exc:
                head.checkpoint = parse_unverified_or_none(head.note)
                out.add(Problem(BAD_SIGNATURE, f"head {head.size}: malformed checkpoint: {exc}", tree_size=head.size))
            else:
                head.checkpoint = checkpoint
                known = [valid_from[k] for k in log_keys if k in valid_from]
                if known and not any(since <= head.signed_at for since in known):
                    out.add(
                        Problem(
                            KEY_NOT_YET_VALID,
                            f"head {head.size} was signed at {head.signed_at.isoformat()}, before its key became"
                            f" valid ({min(known).isoformat()})",
                            tree_size=head.size,
                        )
                    )
                else:
                    head.signed = True
            self._check_head_row(head)
        # Sizes must grow with signing time.
        largest: Head | None = None
        for head in sorted(self.heads, key=lambda h: (h.signed_at, h.size)):
            if largest is not None and head.size < largest.size:
                out.add(
                    Problem(
                        HEAD_ORDER,
                        f"head {head.size} signed at {head.signed_at.isoformat()} is smaller than head {largest.size}"
                        f" signed earlier ({largest.signed_at.isoformat()})",
                        tree_size=head.size,
                    )
                )
            elif largest is None or head.size > largest.size:
                largest = head
        self.limit = max((h.size for h in self.heads if h.signed), default=0)

    def _check_head_row(self, head: Head) -> None:
        cp = head.checkpoint
        if cp is None:
            return
        if self.origin is None and head.signed:
            self.origin = cp.origin
        if self.origin is not None and cp.origin != self.origin:
            self.out.add(
                Problem(
                    ORIGIN_MISMATCH,
                    f"head {head.size} is for origin {cp.origin!r}, not {self.origin!r}",
                    tree_size=head.size,
                )
            )
        mismatched = [
            what
            for what, differs in (
                ("tree_size", cp.size != head.size),
                ("root_hash", cp.root_hash != head.root_hash),
                ("key_name", cp.origin != head.key_name),
            )
            if differs
        ]
        if mismatched:
            self.out.add(
                Problem(
                    HEAD_ROW_MISMATCH,
                    f"head row {head.size}: {', '.join(mismatched)} differ(s) from its signed checkpoint"
                    f" (size {cp.size}, root {cp.root_hash.hex()}, origin {cp.origin!r})",
                    tree_size=head.size,
                )
            )

    def open_saved(self, notes: Sequence[bytes], verifiers: list[NoteVerifier]) -> None:
        for position, note in enumerate(notes):
            try:
                checkpoint, _ = open_signed(bytes(note), verifiers)
            except NoteError as exc:
                self.out.add(Problem(SAVED_HEAD_INVALID, f"saved head #{position + 1} does not open: {exc}"))
                continue
            if self.origin is not None and checkpoint.origin != self.origin:
                self.out.add(
                    Problem(
                        ORIGIN_MISMATCH,
                        f"saved head #{position + 1} is for origin {checkpoint.origin!r}, not {self.origin!r}",
                        tree_size=checkpoint.size,
                    )
                )
                continue
            self.saved.append(SavedHead(position, checkpoint))
            self.limit = max(self.limit, checkpoint.size)

    async def archives(self) -> int:
        """Checks the archive rows; returns the pruning boundary (first unarchived index)."""
        rows = await fetch_rows(
            self.conn, "select first_index, last_index, covered_tree_size from ledger.archives order by first_index", ()
        )
        signed_sizes = {h.size for h in self.heads if h.signed}
        expected = 0
        for first, last, covered in rows:
            if first != expected or last < first:
                self.out.add(
                    Problem(
                        ARCHIVE_UNCOVERED, f"archive [{first}, {last}] does not continue the left edge at {expected}"
                    )
                )
            if covered not in signed_sizes or covered <= last:
                self.out.add(
                    Problem(
                        ARCHIVE_UNCOVERED,
                        f"archive [{first}, {last}] claims head {covered}, not a validly signed head that covers it",
                        tree_size=covered,
                    )
                )
            expected = max(expected, last + 1)
        return expected
