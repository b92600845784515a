"""What `avgate ledger verify` reports: the kinds of problem, one `Problem`, the `VerifyReport`,
and the `ProblemCollector` the checks add to (it keeps the first bad index and folds runs of
missing entries into one problem)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

# Entry-level problems (they name a leaf index).
LEAF_HASH_MISMATCH = "leaf_hash_mismatch"
"""The stored payload does not hash to the stored level-0 node."""
MISSING_ENTRY = "missing_entry"
"""An index below the log's size has no entry (deleted), with or without its leaf node."""
ENTRY_WITHOUT_LEAF_NODE = "entry_without_leaf_node"
"""An entry has no level-0 node."""
PAYLOAD_NOT_JSON = "payload_not_json"
"""The payload is not a JSON object."""
PAYLOAD_ID_MISMATCH = "payload_id_mismatch"
"""The payload's "id" or "key" differs from the row's entry_id or idempotency_key."""
UNSIGNED_ENTRIES = "unsigned_entries"
"""Entries beyond the latest validly signed head."""
# Tree problems.
ROOT_MISMATCH = "root_mismatch"
"""The tree recomputed from the entries does not have the root a stored head signed."""
SAVED_HEAD_MISMATCH = "saved_head_mismatch"
"""The tree recomputed from the entries does not have the root of a saved head."""
HEAD_BEYOND_LOG = "head_beyond_log"
"""A stored head is larger than the log: entries at the tail are gone."""
SAVED_HEAD_BEYOND_LOG = "saved_head_beyond_log"
"""A saved head is larger than the log: the log shrank since it was saved."""
MISSING_NODE = "missing_node"
"""A stored perfect node the verification needs (at the pruning boundary) is absent."""
# Head and key problems.
BAD_SIGNATURE = "bad_signature"
"""A head's checkpoint is malformed or a known key's signature on it does not verify."""
UNKNOWN_KEY = "unknown_key"
"""A head is not signed by any trusted (or published) key of the log."""
KEY_NOT_YET_VALID = "key_not_yet_valid"
"""A head was signed before its key's valid_from."""
SIGNING_KEY_INVALID = "signing_key_invalid"
"""A row of ledger.signing_keys is not a valid vkey."""
HEAD_ROW_MISMATCH = "head_row_mismatch"
"""A head row's tree_size, root_hash or key_name differs from its signed checkpoint."""
HEAD_ORDER = "head_order"
"""Ordered by signed_at, a later head is smaller than an earlier one."""
ORIGIN_MISMATCH = "origin_mismatch"
"""A checkpoint names another log."""
SAVED_HEAD_INVALID = "saved_head_invalid"
"""A saved head does not open with the trusted (or published) keys."""
ARCHIVE_UNCOVERED = "archive_uncovered"
"""An archive's range is not covered by a validly signed head, or archives are not contiguous."""


@dataclass(frozen=True)
class Problem:
    """One thing that does not verify. `leaf_index` names an entry, `tree_size` a head."""

    kind: str
    message: str
    leaf_index: int | None = None
    tree_size: int | None = None

    def __str__(self) -> str:
        return f"[{self.kind}] {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "leaf_index": self.leaf_index, "tree_size": self.tree_size}


@dataclass
class VerifyReport:
    """The outcome of `verify_database`: ok when `problems` is empty."""

    entries_checked: int
    heads_checked: int
    problems: list[Problem]
    first_bad_index: int | None
    tree_size: int = 0
    """The size of the recomputed tree (including archived leaves below the pruning start)."""
    start_index: int = 0
    """The first leaf index recomputed from an entry (above 0 when the log is pruned)."""
    saved_heads_checked: int = 0
    problems_omitted: int = 0
    """Problems found beyond `max_problems` and not listed (`ok` is False all the same)."""
    workers_used: int = 0
    """Worker processes that hashed windows (0: all in this process)."""

    @property
    def ok(self) -> bool:
        return not self.problems and not self.problems_omitted

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries_checked": self.entries_checked,
            "heads_checked": self.heads_checked,
            "saved_heads_checked": self.saved_heads_checked,
            "tree_size": self.tree_size,
            "start_index": self.start_index,
            "first_bad_index": self.first_bad_index,
            "problems": [p.to_json() for p in self.problems],
            "problems_omitted": self.problems_omitted,
        }


@dataclass
class ProblemCollector:
    """The problems found so far, at most `max_problems` of them listed."""

    max_problems: int
    problems: list[Problem] = field(default_factory=list)
    omitted: int = 0
    first_bad: int | None = None
    entry_problem_indexes: list[int] = field(default_factory=list)
    """Indexes with an entry-level problem, ascending (the pass reports them in order)."""
    _open_run: tuple[int, int, bool] | None = None
    """A run of missing entries (first, last, leaf nodes present) not yet reported."""

    def add(self, problem: Problem, *, names_entry: bool = False) -> None:
        if problem.leaf_index is not None and names_entry:
            self._bad(problem.leaf_index)
        if len(self.problems) < self.max_problems:
            self.problems.append(problem)
        else:
            self.omitted += 1

    def bad_index(self, index: int) -> None:
        """Counts `index` towards first_bad_index without an entry-level problem."""
        self._bad(index)

    def _bad(self, index: int) -> None:
        if self.first_bad is None or index < self.first_bad:
            self.first_bad = index

    def entry(self, kind: str, index: int, message: str) -> None:
        self.flush_missing()
        self._entry_index(index)
        self.add(Problem(kind, message, leaf_index=index), names_entry=True)

    def _entry_index(self, index: int) -> None:
        idx = self.entry_problem_indexes
        if not idx or idx[-1] < index:
            idx.append(index)
        elif idx[-1] != index:
            bisect.insort(idx, index)

    def missing(self, index: int, has_leaf_node: bool) -> None:
        """A missing entry; consecutive ones of the same sort are reported as one range."""
        self._entry_index(index)
        run = self._open_run
        if run is not None and run[1] == index - 1 and run[2] == has_leaf_node:
            self._open_run = (run[0], index, has_leaf_node)
            return
        self.flush_missing()
        self._open_run = (index, index, has_leaf_node)

    def flush_missing(self) -> None:
        run = self._open_run
        if run is None:
            return
        self._open_run = None
        first, last, has_leaf_node = run
        what = f"entry {first} is" if first == last else f"entries {first}..{last} are"
        why = "deleted: the leaf hash remains in ledger.nodes" if has_leaf_node else "absent, and so is the leaf node"
        self.add(Problem(MISSING_ENTRY, f"{what} {why}", leaf_index=first), names_entry=True)

    def first_entry_problem_in(self, begin: int, end: int) -> int | None:
        idx = self.entry_problem_indexes
        i = bisect.bisect_left(idx, begin)
        return idx[i] if i < len(idx) and idx[i] < end else None
