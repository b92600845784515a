"""Incident use cases: create (one or a batch), get, list, acknowledge.

Who may do what:
- Providers create incidents for their own tenant and see only those;
  another avgate service calling on a provider's behalf acts for that
  provider's tenant (`Principal.effective`).
- Operators create for any tenant they name and see everything.
- Regulators see only incidents routed to one of their departments in one
  of their regions ("000000" covers every region; "110000" covers Beijing's
  codes) and acknowledge those; their reads are recorded in the ledger.
- An incident outside the caller's reach is reported as not found, so
  callers learn nothing of what they may not see.

Creation is idempotent by (tenant, external id): the same content returns
the incident recorded first, other content is an IdempotencyConflict. Each
creation writes, in one transaction, the incident, its ledger entry and one
outbox event per routed department (destination "authority:<department>",
payload the canonical JSON report). Reporting's outbox dispatcher delivers
them, signed, to each department's adapter (REPORTING_AUTHORITIES; see
services.reporting.wiring).
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from avgate.kernel.errors import (
    DependencyUnavailable,
    DomainError,
    FieldChecker,
    FieldViolation,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
)
from avgate.kernel.paging import check_page_size, decode_page_token, encode_page_token, page_limit
from avgate.kernel.principal import DEPARTMENTS, NATIONAL, REGION_CODE, TENANT_ID, Principal, Role
from avgate.ledger.entry import LedgerEntry
from services.reporting.access import page_entry, read_entry
from services.reporting.domain import SHA256_HEX, in_scope, region_prefix
from services.reporting.incidents.domain import (
    Acknowledgement,
    AuthorityReport,
    ExternalIdTaken,
    Incident,
    IncidentCategory,
    IncidentFilter,
    IncidentInput,
    IncidentQuery,
    IncidentStatus,
    NewIncident,
    RoutingRules,
    content_hash,
    new_incident_id,
    outbox_event_id,
    report_bytes,
)
from services.reporting.incidents.store import IncidentStore

MAX_BATCH = 100
MAX_FACTS = 10_000
MAX_ITEMS = 100
MAX_NOTE = 2000


@dataclass(frozen=True)
class ItemResult:
    """One batch item: the incident (created or existing), or why it failed.

    Neither incident nor error: a valid item not applied because another failed.
    """

    incident: Incident | None = None
    created: bool = False
    error: DomainError | None = None


@dataclass(frozen=True)
class BatchOutcome:
    applied: bool
    results: list[ItemResult]


def _now() -> datetime:
    return datetime.now(UTC)


def check_filter(check: FieldChecker, f: IncidentFilter, prefix: str) -> None:
    """Field violations of a caller's incident filter (listings and the feed)."""
    for i, department in enumerate(f.departments):
        check.require(department in DEPARTMENTS, f"{prefix}departments[{i}]", "not a known department")
    for i, code in enumerate(f.region_codes):
        check.require(bool(REGION_CODE.fullmatch(code)), f"{prefix}region_codes[{i}]", "must be a 6-digit code")
    for i, tenant in enumerate(f.tenant_ids):
        check.require(bool(TENANT_ID.fullmatch(tenant)), f"{prefix}tenant_ids[{i}]", "2-63 of a-z, 0-9, '-'")
    if f.created_from is not None and f.created_before is not None:
        check.require(f.created_before > f.created_from, f"{prefix}create_time_range", "end must be after start")


def scoped_query(caller: Principal, f: IncidentFilter) -> IncidentQuery | None:
    """The caller's filter narrowed to what it may see; None when that is nothing (listings and the feed)."""
    effective = caller.effective
    tenant_ids: tuple[str, ...] | None = f.tenant_ids or None
    departments: tuple[str, ...] | None = f.departments or None
    region_sets: list[tuple[str, ...]] = []
    if f.region_codes:
        region_sets.append(tuple(region_prefix(c) for c in f.region_codes))
    if effective.role is Role.PROVIDER:
        tenant = caller.require_tenant()
        if tenant_ids is not None and tenant not in tenant_ids:
            return None
        tenant_ids = (tenant,)
    elif effective.role is Role.REGULATOR:
        scope = effective.regulator_scope
        if scope is None or not scope.departments or not scope.region_codes:
            return None
        allowed = tuple(d for d in scope.departments if departments is None or d in departments)
        if not allowed:
            return None
        departments = allowed
        prefixes = tuple(region_prefix(c) for c in scope.region_codes)
        if "" not in prefixes:
            region_sets.append(prefixes)
    return IncidentQuery(
        tenant_ids=tenant_ids,
        departments=departments,
        region_prefix_sets=tuple(s for s in region_sets if "" not in s),
        categories=f.categories or None,
        statuses=f.statuses or None,
        sources=f.sources or None,
        created_from=f.created_from,
        created_before=f.created_before,
        content_id=f.content_id or None,
        user_id=f.user_id or None,
    )


class IncidentService:
    def __init__(self, store: IncidentStore, routing: RoutingRules | None = None, clock: Callable[[], datetime] = _now):
        self._store = store
        self._routing = routing or RoutingRules()
        self._clock = clock

    # ----------------------------------------------------------------------- create

    async def create(self, caller: Principal, incident: IncidentInput) -> tuple[Incident, bool]:
        """The incident and whether this call created it (False: it existed with the same content)."""
        outcome = await self._create_all(caller, [incident], ["incident."])
        (result,) = outcome.results
        if result.error is not None:
            raise result.error
        assert result.incident is not None
        return result.incident, result.created

    async def batch_create(self, caller: Principal, incidents: Sequence[IncidentInput]) -> BatchOutcome:
        """1 to 100 incidents, all applied or none, with one result per item in order."""
        if not 1 <= len(incidents) <= MAX_BATCH:
            raise InvalidArgument(FieldViolation("incidents", f"must hold 1 to {MAX_BATCH} incidents"))
        return await self._create_all(caller, incidents, [f"incidents[{i}]." for i in range(len(incidents))])

    async def _create_all(
        self, caller: Principal, inputs: Sequence[IncidentInput], prefixes: Sequence[str]
    ) -> BatchOutcome:
        caller.require_role(Role.PROVIDER, Role.OPERATOR)
        checked: list[tuple[IncidentInput, bytes] | DomainError] = []
        for item, prefix in zip(inputs, prefixes, strict=True):
            try:
                normalised = self._validate(caller, item, prefix)
                checked.append((normalised, content_hash(normalised, normalised.tenant_id)))
            except InvalidArgument as exc:
                checked.append(exc)
        # Two rounds: a concurrent create of the same external id makes the first write fail;
        # the second round finds that incident and answers as a resubmission would.
        for _ in range(2):
            outcome, new = await self._plan(caller, checked)
            if not outcome.applied:
                return outcome
            try:
                await self._store.add(new)
            except ExternalIdTaken:
                continue
            return outcome
        raise DependencyUnavailable("incident store", message="concurrent creates of the same external id; retry")

    async def _plan(
        self, caller: Principal, checked: Sequence[tuple[IncidentInput, bytes] | DomainError]
    ) -> tuple[BatchOutcome, list[NewIncident]]:
        wanted: dict[str, list[str]] = {}
        for c in checked:
            if not isinstance(c, DomainError):
                wanted.setdefault(c[0].tenant_id, []).append(c[0].external_id)
        existing: dict[tuple[str, str], Incident] = {}
        for tenant_id, external_ids in wanted.items():
            found = await self._store.find_by_external_ids(tenant_id, external_ids)
            existing.update({(tenant_id, k): v for k, v in found.items()})
        results: list[ItemResult] = []
        new: list[NewIncident] = []
        for c in checked:
            if isinstance(c, DomainError):
                results.append(ItemResult(error=c))
                continue
            normalised, digest = c
            key = (normalised.tenant_id, normalised.external_id)
            earlier = existing.get(key)
            if earlier is None:
                created = self._new_incident(caller, normalised, digest)
                existing[key] = created.incident
                new.append(created)
                results.append(ItemResult(incident=created.incident, created=True))
            elif earlier.content_hash == digest:
                results.append(ItemResult(incident=earlier, created=False))
            else:
                results.append(
                    ItemResult(
                        error=IdempotencyConflict(
                            "incident",
                            normalised.external_id,
                            f"incident {normalised.external_id!r} exists with different content",
                        )
                    )
                )
        if any(r.error is not None for r in results):
            return BatchOutcome(False, [r if r.error is not None else ItemResult() for r in results]), []
        return BatchOutcome(True, results), new

    def prepare(self, caller: Principal, incident: IncidentInput) -> NewIncident:
        """Validates `incident` and builds everything its creation writes, without writing it.

        For a record reported as an incident (a security assessment): its
        store writes the record and this incident in one transaction
        (services.reporting.incidents.store.SqlIncidentStore.write_new). Field violations are
        named under "incident.".
        """
        caller.require_role(Role.PROVIDER, Role.OPERATOR)
        normalised = self._validate(caller, incident, "incident.")
        return self._new_incident(caller, normalised, content_hash(normalised, normalised.tenant_id))

    def visible(self, caller: Principal, incident_filter: IncidentFilter | None = None) -> IncidentQuery | None:
        """The incidents `caller` may list, narrowed by `incident_filter`; None when that is none at all."""
        return scoped_query(caller, incident_filter or IncidentFilter())

    def _new_incident(self, caller: Principal, normalised: IncidentInput, digest: bytes) -> NewIncident:
        assert normalised.category is not None and normalised.source is not None
        now = self._clock()
        incident_id = new_incident_id()
        entry_id = uuid.uuid4()
        incident = Incident(
            incident_id=incident_id,
            tenant_id=normalised.tenant_id,
            content_hash=digest,
            input=normalised,
            routes=self._routing.routes(normalised.category, normalised.region_code),
            status=IncidentStatus.RECORDED,
            create_time=now,
            update_time=now,
            ledger_entry_id=entry_id,
        )
        audit = LedgerEntry(
            action="incident.create",
            subject_type="incident",
            subject_id=incident_id,
            actor=caller,
            legal_basis="; ".join(b.cite() for b in normalised.legal_basis),
            tenant_id=incident.tenant_id,
            data={
                "external_id": normalised.external_id,
                "category": normalised.category.value,
                "source": normalised.source.value,
                "content_sha256": digest.hex(),
                "routes": [f"{r.department}/{r.region_code}" for r in incident.routes],
            },
            idempotency_key=f"incident.create:{incident.tenant_id}:{normalised.external_id}",
            entry_id=entry_id,
            occurred_at=now,
        )
        payload = report_bytes(incident)
        reports = tuple(
            AuthorityReport(outbox_event_id(incident_id, d), f"authority:{d}", payload) for d in incident.departments
        )
        return NewIncident(incident, audit, reports)

    def _validate(self, caller: Principal, item: IncidentInput, prefix: str) -> IncidentInput:
        """The input with tenant and region resolved, or InvalidArgument naming every broken field."""
        check = FieldChecker()

        def at(path: str) -> str:
            return prefix + path

        if caller.effective.role is Role.PROVIDER:
            tenant = caller.require_tenant()
            check.require(item.tenant_id in ("", tenant), at("tenant_id"), "must be the caller's own tenant")
        else:
            tenant = item.tenant_id
            check.require(bool(TENANT_ID.fullmatch(tenant)), at("tenant_id"), "required: 2-63 of a-z, 0-9, '-'")
        check.identifier(item.external_id, at("external_id"), max_length=128)
        check.require(item.source is not None, at("source"), "must be set")
        check.require(item.category is not None, at("category"), "must be set")
        if item.category is IncidentCategory.PROHIBITED_CONTENT:
            check.require(item.prohibited_type is not None, at("prohibited_type"), "required for prohibited content")
        elif item.prohibited_type is not None:
            check.add(at("prohibited_type"), "only prohibited content has a prohibited type")
        if not 1 <= len(item.legal_basis) <= 20:
            check.add(at("legal_basis"), "must name 1 to 20 provisions")
        for i, basis in enumerate(item.legal_basis):
            check.text(basis.instrument, at(f"legal_basis[{i}].instrument"), required=True, max_length=64)
            check.text(basis.article, at(f"legal_basis[{i}].article"), required=True, max_length=16)
            check.text(basis.paragraph, at(f"legal_basis[{i}].paragraph"), required=False, max_length=16)
            check.text(basis.note, at(f"legal_basis[{i}].note"), required=False, max_length=MAX_NOTE)
        check.text(item.facts, at("facts"), required=True, max_length=MAX_FACTS)
        check.require(len(item.content) <= MAX_ITEMS, at("content"), f"at most {MAX_ITEMS} items")
        for i, ref in enumerate(item.content):
            check.identifier(ref.content_id, at(f"content[{i}].content_id"))
            check.require(ref.tenant_id in ("", tenant), at(f"content[{i}].tenant_id"), "must be the incident's tenant")
            check.text(ref.uri, at(f"content[{i}].uri"), required=False, max_length=2048)
            check.require(
                not ref.sha256 or bool(SHA256_HEX.fullmatch(ref.sha256)),
                at(f"content[{i}].sha256"),
                "must be 64 lower-case hex digits",
            )
            check.require(len(ref.media_type) <= 128, at(f"content[{i}].media_type"), "at most 128 characters")
        if item.user is not None:
            check.identifier(item.user.user_id, at("user.user_id"))
            check.require(item.user.tenant_id in ("", tenant), at("user.tenant_id"), "must be the incident's tenant")
        if item.action is not None:
            action = item.action
            check.require(action.type is not None, at("action.type"), "must be set when an action is given")
            check.text(action.detail, at("action.detail"), required=False, max_length=MAX_NOTE)
            if action.enforcement_action_id:
                check.identifier(action.enforcement_action_id, at("action.enforcement_action_id"))
            if action.action_time is not None and action.until_time is not None:
                check.require(
                    action.until_time > action.action_time, at("action.until_time"), "must be after action_time"
                )
        check.require(
            not item.region_code or bool(REGION_CODE.fullmatch(item.region_code)),
            at("region_code"),
            "must be a 6-digit GB/T 2260 code",
        )
        check.require(len(item.evidence) <= MAX_ITEMS, at("evidence"), f"at most {MAX_ITEMS} items")
        for i, evidence in enumerate(item.evidence):
            check.require(
                bool(SHA256_HEX.fullmatch(evidence.sha256)),
                at(f"evidence[{i}].sha256"),
                "must be 64 lower-case hex digits",
            )
            check.require(evidence.size_bytes >= 0, at(f"evidence[{i}].size_bytes"), "must not be negative")
        check.require(len(item.related) <= MAX_ITEMS, at("related"), f"at most {MAX_ITEMS} items")
        for i, related in enumerate(item.related):
            check.require(related.kind is not None, at(f"related[{i}].kind"), "must be set")
            check.identifier(related.id, at(f"related[{i}].id"))
        check.raise_if_any()
        return replace(
            item,
            tenant_id=tenant,
            region_code=item.region_code or NATIONAL,
            content=tuple(replace(c, tenant_id=tenant) for c in item.content),
            user=replace(item.user, tenant_id=tenant) if item.user is not None else None,
        )

    # ----------------------------------------------------------------------- read

    async def get(self, caller: Principal, incident_id: str) -> Incident:
        caller.require_role(Role.PROVIDER, Role.REGULATOR, Role.OPERATOR)
        if not incident_id:
            raise InvalidArgument(FieldViolation("incident_id", "must be set"))
        incident = await self._store.get(incident_id)
        if incident is None or not self._may_see(caller, incident):
            raise NotFound("incident", incident_id)
        if caller.effective.role is Role.REGULATOR:
            await self._store.record(read_entry(caller, "incident", incident_id, incident.tenant_id))
        return incident

    async def list(
        self, caller: Principal, incident_filter: IncidentFilter, *, page_size: int, page_token: str
    ) -> tuple[builtins.list[Incident], str]:
        caller.require_role(Role.PROVIDER, Role.REGULATOR, Role.OPERATOR)
        check = FieldChecker()
        check_page_size(check, page_size)
        check_filter(check, incident_filter, "filter.")
        check.raise_if_any()
        after = decode_page_token(page_token) if page_token else None
        query = scoped_query(caller, incident_filter)
        if query is None:
            return [], ""
        limit = page_limit(page_size)
        found = await self._store.list(query, after=after, limit=limit + 1)
        page = found[:limit]
        next_token = encode_page_token(page[-1].create_time, page[-1].incident_id) if len(found) > limit else ""
        if caller.effective.role is Role.REGULATOR and page:
            # One entry per page read, not one per incident.
            await self._store.record(page_entry(caller, "incident", "incident_id", [i.incident_id for i in page]))
        return page, next_token

    @staticmethod
    def _may_see(caller: Principal, incident: Incident) -> bool:
        effective = caller.effective
        if effective.role is Role.OPERATOR:
            return True
        if effective.role is Role.PROVIDER:
            return incident.tenant_id == effective.tenant_id
        if effective.role is Role.REGULATOR:
            return in_scope(effective.regulator_scope, incident.routes)
        return False

    # ----------------------------------------------------------------------- acknowledge

    async def acknowledge(self, caller: Principal, incident_id: str, *, note: str, request_id: str) -> Incident:
        caller.require_role(Role.REGULATOR)
        check = FieldChecker()
        check.require(bool(incident_id), "incident_id", "must be set")
        check.text(note, "note", required=False, max_length=MAX_NOTE)
        if request_id:
            check.identifier(request_id, "request_id", max_length=128)
        check.raise_if_any()
        incident = await self._store.get(incident_id)
        regulator = caller.effective
        scope = regulator.regulator_scope
        if incident is None or scope is None or not in_scope(scope, incident.routes):
            raise NotFound("incident", incident_id)
        department, region = next(
            (route.department, code)
            for route in incident.routes
            for code in scope.region_codes
            if route.department in scope.departments and route.region_code.startswith(region_prefix(code))
        )
        ack = Acknowledgement(
            department=department,
            region_code=region,
            acknowledged_by=regulator.subject,
            acknowledge_time=self._clock(),
            note=note,
            request_id=request_id,
        )
        audit = LedgerEntry(
            action="incident.acknowledge",
            subject_type="incident",
            subject_id=incident_id,
            actor=caller,
            tenant_id=incident.tenant_id,
            data={"department": department, "region_code": region, "request_id": request_id},
            idempotency_key=f"incident.acknowledge:{incident_id}:{regulator.subject}:{request_id}"
            if request_id
            else "",
            occurred_at=ack.acknowledge_time,
        )
        updated = await self._store.acknowledge(incident_id, ack, audit)
        if updated is None:
            raise NotFound("incident", incident_id)
        return updated
