"""The regulator's check: does today's log extend a tree head saved earlier?

A regulator or witness keeps a signed checkpoint (`avgate ledger head > saved.txt`).
Later it fetches the log's latest signed checkpoint and an RFC 9162 consistency
proof from the saved size to the latest size, and checks, with keys it trusts
(ideally the published keys, pinned), that

* both checkpoints carry a valid signature by the log's key (named like the origin),
* both are for the same log (same origin),
* the log did not shrink,
* at equal sizes the roots are identical, and
* otherwise the consistency proof turns the saved root into the latest root.

:func:`check_extends` is that step, pure and offline: it takes bytes and returns a
:class:`CheckResult` saying whether the log extends the saved head and, if not, why.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from avgate.ledger.checkpoint import (
    Checkpoint,
    NoteError,
    NoteVerifier,
    open_checkpoint,
)
from avgate.ledger.merkle import ProofError, verify_consistency

__all__ = [
    "REASON_FORK",
    "REASON_ORIGIN",
    "REASON_PROOF",
    "REASON_SHRUNK",
    "REASON_SIGNATURE",
    "CheckResult",
    "check_extends",
    "rfc3339_ms",
]

REASON_SIGNATURE = "signature"
"""A checkpoint is malformed or lacks a valid signature by a trusted log key."""
REASON_ORIGIN = "origin"
"""The two checkpoints are for different logs."""
REASON_SHRUNK = "shrunk"
"""The latest tree is smaller than the saved one."""
REASON_FORK = "fork"
"""Same size, different root: the log was rewritten."""
REASON_PROOF = "proof"
"""The consistency proof does not lead from the saved root to the latest root."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of :func:`check_extends`.

    ``reason`` is one of the ``REASON_*`` constants (None when ``ok``) and
    ``detail`` says what exactly failed, for people.
    """

    ok: bool
    saved: Checkpoint | None
    latest: Checkpoint | None
    reason: str | None = None
    detail: str = ""

    @property
    def saved_size(self) -> int | None:
        return self.saved.size if self.saved is not None else None

    @property
    def latest_size(self) -> int | None:
        return self.latest.size if self.latest is not None else None

    def message(self) -> str:
        if self.ok:
            assert self.saved is not None and self.latest is not None
            return f"the log at size {self.latest.size} extends your saved head at size {self.saved.size}"
        saved = f" at size {self.saved.size}" if self.saved is not None else ""
        latest = f"the log at size {self.latest.size}" if self.latest is not None else "the log"
        return f"{latest} does NOT extend your saved head{saved}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        def head(cp: Checkpoint | None) -> dict[str, Any] | None:
            if cp is None:
                return None
            return {
                "origin": cp.origin,
                "tree_size": cp.size,
                "root_hash": cp.root_hash.hex(),
                "timestamp": rfc3339_ms(cp.timestamp_ms),
            }

        return {
            "ok": self.ok,
            "reason": self.reason,
            "message": self.message(),
            "saved": head(self.saved),
            "latest": head(self.latest),
        }


def rfc3339_ms(timestamp_ms: int | None) -> str | None:
    """Milliseconds since the epoch as RFC 3339 in UTC (``2024-05-01T12:00:00.123Z``)."""
    if timestamp_ms is None:
        return None
    when = datetime.datetime.fromtimestamp(timestamp_ms / 1000, tz=datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _open(note: bytes, verifiers: Sequence[NoteVerifier], which: str) -> Checkpoint | str:
    try:
        return open_checkpoint(note, verifiers)
    except (NoteError, TypeError) as exc:
        return f"the {which} head's signature is invalid or not by a trusted key: {exc}"


def check_extends(
    saved_note: bytes, latest_note: bytes, proof: Sequence[bytes], verifiers: Iterable[NoteVerifier]
) -> CheckResult:
    """Whether the signed checkpoint ``latest_note`` extends the signed checkpoint ``saved_note``.

    ``proof`` is the RFC 9162 consistency proof from the saved size to the latest
    size (empty when the sizes are equal). ``verifiers`` are the only keys trusted.
    Never raises for bad input: a failure is a result with ``ok=False``.
    """
    trusted = list(verifiers)
    saved = _open(saved_note, trusted, "saved")
    latest = _open(latest_note, trusted, "latest")
    if isinstance(saved, str) or isinstance(latest, str):
        detail = "; ".join(x for x in (saved, latest) if isinstance(x, str))
        return CheckResult(
            False,
            saved if isinstance(saved, Checkpoint) else None,
            latest if isinstance(latest, Checkpoint) else None,
            REASON_SIGNATURE,
            detail,
        )
    if saved.origin != latest.origin:
        return CheckResult(
            False,
            saved,
            latest,
            REASON_ORIGIN,
            f"the heads are for different logs: saved {saved.origin!r}, latest {latest.origin!r}",
        )
    if latest.size < saved.size:
        return CheckResult(
            False,
            saved,
            latest,
            REASON_SHRUNK,
            f"the latest tree size {latest.size} is smaller than the saved size {saved.size}: entries were removed",
        )
    if latest.size == saved.size:
        if latest.root_hash != saved.root_hash:
            return CheckResult(
                False,
                saved,
                latest,
                REASON_FORK,
                f"same tree size {saved.size} but a different root hash"
                f" (saved {saved.root_hash.hex()}, latest {latest.root_hash.hex()}): the log was rewritten",
            )
        if len(proof) != 0:
            return CheckResult(
                False, saved, latest, REASON_PROOF, f"sizes are equal but the proof is not empty ({len(proof)} hashes)"
            )
        return CheckResult(True, saved, latest)
    if saved.size == 0:
        # Every tree extends the empty tree; RFC 9162 has no proof for it.
        return CheckResult(True, saved, latest)
    try:
        verify_consistency(saved.size, latest.size, list(proof), saved.root_hash, latest.root_hash)
    except (ProofError, ValueError, TypeError) as exc:
        return CheckResult(False, saved, latest, REASON_PROOF, f"the consistency proof fails: {exc}")
    return CheckResult(True, saved, latest)
