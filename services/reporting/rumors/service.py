"""Refuted-rumour use cases (Art. 13): add, get, list, retire, match.

Who may do what:
- Operators add shared entries (no tenant: matched for every tenant) or
  entries of a tenant they name, retire any entry and see all of them.
- Providers (and avgate services acting for one, `Principal.effective`) add
  and retire their own tenant's entries and see those plus the shared ones.
  A shared entry is theirs to read and match against, not to retire.
- Regulators read every entry (refutations are public statements that RUMOR
  incidents refer to); each read is recorded in the ledger.
- Something outside the caller's reach is reported as not found.

Adding is idempotent by (owner, request id): the same content returns the
entry added first, other content is an IdempotencyConflict. Adding and
retiring write their ledger entries in the same transaction; the entries
carry hashes and ids, never the texts.

Matching is read-only and creates nothing: screening reports a RUMOR
incident (with a related record of kind REFUTED_RUMOR) when it acts on a
match. It runs on an in-memory index of the active entries
(`matching.RumorIndex`), rebuilt after this process adds or retires and
whenever the store's cheap change check (`RumorStore.version`, looked at
most every `refresh_seconds`) shows another replica changed the registry.
Matched entries are re-read from the store before they are returned, so
an entry retired elsewhere is never returned even before the index
catches up.
"""

from __future__ import annotations

import asyncio
import builtins
import math
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from avgate.kernel.errors import (
    DependencyUnavailable,
    FieldChecker,
    FieldViolation,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from avgate.kernel.paging import check_page_size, decode_page_token, encode_page_token, page_limit
from avgate.kernel.principal import TENANT_ID, Principal, Role
from avgate.ledger.entry import LedgerEntry
from services.reporting.access import page_entry, read_entry
from services.reporting.rumors.domain import (
    DEFAULT_MAX_RESULTS,
    LEGAL_BASIS,
    MAX_AUTHORITY,
    MAX_CLAIM,
    MAX_DESCRIPTION,
    MAX_REASON,
    MAX_REFUTATION,
    MAX_REQUEST_ID,
    MAX_RESULTS,
    MAX_TITLE,
    MAX_TRANSCRIPT,
    MAX_URL,
    SHARED,
    MatchRequest,
    RefutedRumor,
    RequestIdTaken,
    RumorFilter,
    RumorInput,
    RumorMatch,
    RumorQuery,
    new_rumor_id,
    request_hash,
    sha256_hex,
)
from services.reporting.rumors.matching import METHOD, RumorIndex, ngrams
from services.reporting.rumors.store import RumorStore

CLOCK_SKEW = timedelta(seconds=60)
"""How far in the future a publish time may lie: the caller's clock may run ahead of ours."""


def _now() -> datetime:
    return datetime.now(UTC)


def _public_text(check: FieldChecker, value: str, path: str, *, max_length: int) -> None:
    """A registry text: 1..max_length characters, kept as the authority published it.

    Unlike FieldChecker.text this refuses no personal data: a rumour and its
    refutation are public statements quoted as published, and their texts
    never reach the ledger (its entries carry their hashes).
    """
    if not value.strip():
        check.add(path, f"must be 1 to {max_length} characters")
    elif len(value) > max_length:
        check.add(path, f"must be at most {max_length} characters")


def _http_url(value: str) -> bool:
    if not value.isprintable() or any(ch.isspace() for ch in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class RumorService:
    def __init__(
        self,
        store: RumorStore,
        *,
        default_threshold: float = 0.6,
        refresh_seconds: float = 2.0,
        clock: Callable[[], datetime] = _now,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        if not 0 < default_threshold <= 1:
            raise ValueError("the default match threshold must be in (0, 1]")
        self._store = store
        self._default_threshold = default_threshold
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._index: RumorIndex | None = None
        self._version: tuple[int, int] | None = None
        self._checked = -math.inf
        self._stale = True
        self._lock = asyncio.Lock()

    # ----------------------------------------------------------------------- add

    async def add(self, caller: Principal, request_id: str, item: RumorInput) -> RefutedRumor:
        caller.require_role(Role.PROVIDER, Role.OPERATOR)
        owner = self._validate(caller, request_id, item)
        digest = request_hash(item, owner)
        # Two rounds: a concurrent add with the same request id makes the first write fail;
        # the second round finds that entry and answers as a retry would.
        for _ in range(2):
            earlier = await self._store.find_by_request(owner, request_id)
            if earlier is not None:
                if earlier.request_hash != digest:
                    raise IdempotencyConflict(
                        "refuted_rumor", request_id, f"request {request_id!r} added an entry with different content"
                    )
                return earlier
            rumor = self._new(caller, owner, request_id, item, digest)
            try:
                await self._store.add(rumor, self._added(caller, rumor))
            except RequestIdTaken:
                continue
            self._stale = True
            return rumor
        raise DependencyUnavailable("rumour store", message="concurrent adds with the same request id; retry")

    def _validate(self, caller: Principal, request_id: str, item: RumorInput) -> str:
        """The owner the entry goes to, or InvalidArgument naming every broken field."""
        check = FieldChecker()
        check.identifier(request_id, "request_id", max_length=MAX_REQUEST_ID)
        if caller.effective.role is Role.PROVIDER:
            owner = caller.require_tenant()
            check.require(item.tenant_id in ("", owner), "rumor.tenant_id", "must be the caller's own tenant")
        else:
            owner = item.tenant_id
            check.require(
                owner == SHARED or bool(TENANT_ID.fullmatch(owner)),
                "rumor.tenant_id",
                "empty (shared with every tenant) or 2-63 of a-z, 0-9, '-'",
            )
        _public_text(check, item.claim_text, "rumor.claim_text", max_length=MAX_CLAIM)
        if item.claim_text.strip() and len(item.claim_text) <= MAX_CLAIM and not ngrams(item.claim_text).grams:
            check.add("rumor.claim_text", "must hold an ideograph or a word of two letters or digits to match")
        _public_text(check, item.refutation_text, "rumor.refutation_text", max_length=MAX_REFUTATION)
        check.require(
            len(item.refutation_url) <= MAX_URL and _http_url(item.refutation_url),
            "rumor.refutation_url",
            f"must be an http or https URL of at most {MAX_URL} characters",
        )
        _public_text(check, item.issuing_authority, "rumor.issuing_authority", max_length=MAX_AUTHORITY)
        if item.publish_time is None:
            check.add("rumor.publish_time", "must be set")
        elif item.publish_time > self._clock() + CLOCK_SKEW:
            check.add("rumor.publish_time", "must not be in the future")
        check.raise_if_any()
        return owner

    def _new(self, caller: Principal, owner: str, request_id: str, item: RumorInput, digest: bytes) -> RefutedRumor:
        assert item.publish_time is not None
        return RefutedRumor(
            rumor_id=new_rumor_id(),
            tenant_id=owner,
            claim_text=item.claim_text,
            refutation_text=item.refutation_text,
            refutation_url=item.refutation_url,
            issuing_authority=item.issuing_authority,
            publish_time=item.publish_time,
            create_time=self._clock(),
            request_id=request_id,
            request_hash=digest,
            ledger_entry_id=uuid.uuid4(),
        )

    @staticmethod
    def _added(caller: Principal, rumor: RefutedRumor) -> LedgerEntry:
        # Hashes, not texts: the entry proves what was registered without carrying it.
        return LedgerEntry(
            action="refuted_rumor.add",
            subject_type="refuted_rumor",
            subject_id=rumor.rumor_id,
            actor=caller,
            legal_basis=LEGAL_BASIS,
            tenant_id=rumor.tenant_id,
            data={
                "shared": rumor.tenant_id == SHARED,
                "request_sha256": rumor.request_hash.hex(),
                "claim_sha256": sha256_hex(rumor.claim_text),
                "refutation_sha256": sha256_hex(rumor.refutation_text),
                "refutation_url_sha256": sha256_hex(rumor.refutation_url),
                "issuing_authority_sha256": sha256_hex(rumor.issuing_authority),
            },
            idempotency_key=f"refuted_rumor.add:{rumor.tenant_id}:{rumor.request_id}",
            entry_id=rumor.ledger_entry_id,
            occurred_at=rumor.create_time,
        )

    # ----------------------------------------------------------------------- read

    @staticmethod
    def _owners(caller: Principal) -> tuple[str, ...] | None:
        """The owners whose entries the caller sees; None: every owner."""
        if caller.effective.role is Role.PROVIDER:
            return (SHARED, caller.require_tenant())
        return None

    async def get(self, caller: Principal, rumor_id: str) -> RefutedRumor:
        caller.require_role(Role.PROVIDER, Role.OPERATOR, Role.REGULATOR)
        if not rumor_id:
            raise InvalidArgument(FieldViolation("rumor_id", "must be set"))
        rumor = await self._store.get(rumor_id)
        owners = self._owners(caller)
        if rumor is None or (owners is not None and rumor.tenant_id not in owners):
            raise NotFound("refuted_rumor", rumor_id)
        if caller.effective.role is Role.REGULATOR:
            await self._store.record(read_entry(caller, "refuted_rumor", rumor_id, rumor.tenant_id))
        return rumor

    async def list(
        self, caller: Principal, rumor_filter: RumorFilter, *, page_size: int, page_token: str
    ) -> tuple[builtins.list[RefutedRumor], str]:
        caller.require_role(Role.PROVIDER, Role.OPERATOR, Role.REGULATOR)
        check = FieldChecker()
        check_page_size(check, page_size)
        check.require(
            len(rumor_filter.issuing_authority) <= MAX_AUTHORITY,
            "issuing_authority",
            f"must be at most {MAX_AUTHORITY} characters",
        )
        check.raise_if_any()
        after = decode_page_token(page_token) if page_token else None
        limit = page_limit(page_size)
        query = RumorQuery(
            owners=self._owners(caller),
            include_retired=rumor_filter.include_retired,
            issuing_authority=rumor_filter.issuing_authority or None,
            published_from=rumor_filter.published_from,
            published_before=rumor_filter.published_before,
        )
        found = await self._store.list(query, after=after, limit=limit + 1)
        page = found[:limit]
        next_token = encode_page_token(page[-1].create_time, page[-1].rumor_id) if len(found) > limit else ""
        if caller.effective.role is Role.REGULATOR and page:
            await self._store.record(page_entry(caller, "refuted_rumor", "rumor_id", [r.rumor_id for r in page]))
        return page, next_token

    # ----------------------------------------------------------------------- retire

    async def retire(self, caller: Principal, rumor_id: str, reason: str) -> RefutedRumor:
        """Retires an entry; retiring a retired entry returns it unchanged (the first reason stands)."""
        caller.require_role(Role.PROVIDER, Role.OPERATOR)
        check = FieldChecker()
        check.require(bool(rumor_id), "rumor_id", "must be set")
        check.text(reason, "reason", max_length=MAX_REASON)  # the reason goes into the ledger entry
        check.raise_if_any()
        rumor = await self._store.get(rumor_id)
        owners = self._owners(caller)
        if rumor is None or (owners is not None and rumor.tenant_id not in owners):
            raise NotFound("refuted_rumor", rumor_id)
        if owners is not None and rumor.tenant_id == SHARED:
            raise PermissionDenied("shared refuted rumours are retired by operators")
        now = self._clock()
        audit = LedgerEntry(
            action="refuted_rumor.retire",
            subject_type="refuted_rumor",
            subject_id=rumor_id,
            actor=caller,
            legal_basis=LEGAL_BASIS,
            reason=reason,
            tenant_id=rumor.tenant_id,
            data={"claim_sha256": sha256_hex(rumor.claim_text)},
            idempotency_key=f"refuted_rumor.retire:{rumor_id}",
            occurred_at=now,
        )
        retired = await self._store.retire(rumor_id, now, reason, audit)
        if retired is None:
            raise NotFound("refuted_rumor", rumor_id)
        self._stale = True
        return retired

    # ----------------------------------------------------------------------- match

    async def match(self, caller: Principal, request: MatchRequest) -> tuple[builtins.list[RumorMatch], float]:
        """Active entries the caller's tenant sees scoring at least the threshold, best first, and the threshold."""
        caller.require_role(Role.PROVIDER, Role.OPERATOR)
        check = FieldChecker()
        for path, value, max_length in (
            ("title", request.title, MAX_TITLE),
            ("description", request.description, MAX_DESCRIPTION),
            ("transcript", request.transcript, MAX_TRANSCRIPT),
        ):
            check.require(len(value) <= max_length, path, f"must be at most {max_length} characters")
        if not (request.title or request.description or request.transcript):
            check.add("title", "one of title, description or transcript is required")
        check.require(
            math.isfinite(request.threshold) and 0 <= request.threshold <= 1,
            "threshold",
            "must be between 0 and 1 (0: the configured default)",
        )
        check.require(0 <= request.max_results <= MAX_RESULTS, "max_results", f"must be between 0 and {MAX_RESULTS}")
        if caller.effective.role is Role.PROVIDER:
            check.require(
                request.content_tenant_id in ("", caller.require_tenant()),
                "content.tenant_id",
                "must be the caller's own tenant",
            )
        if request.content_id:
            check.identifier(request.content_id, "content.content_id")
        check.raise_if_any()
        threshold = request.threshold or self._default_threshold
        limit = request.max_results or DEFAULT_MAX_RESULTS
        index = await self._current_index()
        fields = {"title": request.title, "description": request.description, "transcript": request.transcript}
        # CPU-bound for long transcripts: off the event loop, on an index no one mutates.
        found = await asyncio.to_thread(index.match, fields, owners=self._owners(caller), threshold=threshold)
        matches: builtins.list[RumorMatch] = []
        for start in range(0, len(found), limit):
            chunk = found[start : start + limit]
            rumors = await self._store.get_many([m.key for m in chunk])
            for m in chunk:
                rumor = rumors.get(m.key)
                if rumor is not None and rumor.active:  # retired by another replica since the index was built
                    matches.append(RumorMatch(rumor, m.score, m.field, m.passage, METHOD))
            if len(matches) >= limit:
                break
        return matches[:limit], threshold

    async def _current_index(self) -> RumorIndex:
        if self._fresh():
            assert self._index is not None
            return self._index
        async with self._lock:
            if self._fresh():
                assert self._index is not None
                return self._index
            # The version is read before the entries: a change committed in between is either in the
            # entries or makes the next check reload; read after, it could be missed for good.
            version = await self._store.version()
            self._checked = self._monotonic()
            if self._index is None or self._stale or version != self._version:
                self._stale = False  # an add or retire from now on marks it stale again
                entries = await self._store.active_claims()
                self._index = await asyncio.to_thread(RumorIndex, entries)
                self._version = version
            return self._index

    def _fresh(self) -> bool:
        return self._index is not None and not self._stale and self._monotonic() - self._checked < self._refresh_seconds
