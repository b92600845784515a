"""Delivery use cases: list, get, list dead letters, replay dead letters.

Who may do what:
- Operators see every delivery and alone may replay dead letters.
- Providers see their own tenant's deliveries, read-only; another avgate
  service calling on a provider's behalf acts for that provider's tenant.
- Regulators are refused: what reaches them is the incidents routed to
  them (IncidentService), not the provider's delivery machinery.
- A delivery outside the caller's reach is reported as not found.

A replay names 1 to 100 dead letters and a reason; it moves all of them
back to pending with their idempotency keys (the event ids) unchanged, or
changes nothing: an unknown id is NOT_FOUND, one that is not dead is
FAILED_PRECONDITION. Each replayed delivery gets its own ledger entry in
the replay's transaction, and incidents that had failed only on these
deliveries are RECORDED again (services.reporting.deliveries.store).
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace

from avgate.kernel.errors import FailedPrecondition, FieldChecker, FieldViolation, InvalidArgument, NotFound
from avgate.kernel.paging import Cursor, check_page_size, decode_page_token, encode_page_token, page_limit
from avgate.kernel.principal import DEPARTMENTS, Principal, Role
from avgate.ledger.entry import LedgerEntry
from services.reporting.deliveries.domain import AdapterKind, Delivery, DeliveryFilter, DeliveryQuery, DeliveryState
from services.reporting.deliveries.store import DeliveryStore

MAX_REPLAY = 100
MAX_REASON = 500
MAX_INCIDENT_ID = 40
READERS = (Role.PROVIDER, Role.OPERATOR)


def _delivery_id(check: FieldChecker, value: str, path: str) -> uuid.UUID | None:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        check.add(path, "must be a delivery id (a UUID)")
        return None
    if str(parsed) != value.lower():  # uuid.UUID also takes braces, URNs and missing hyphens
        check.add(path, "must be a delivery id (a UUID)")
        return None
    return parsed


def _endpoint(check: FieldChecker, endpoint_id: str, path: str) -> str | None:
    if not endpoint_id:
        return None
    check.require(endpoint_id in DEPARTMENTS, path, f"must be an endpoint id: one of {', '.join(DEPARTMENTS)}")
    return endpoint_id


def _cursor(token: str) -> Cursor | None:
    if not token:
        return None
    created, last_id = decode_page_token(token)
    try:
        uuid.UUID(last_id)
    except ValueError as exc:
        raise InvalidArgument(FieldViolation("page.page_token", "not a token this API issued")) from exc
    return created, last_id


class DeliveryService:
    def __init__(self, store: DeliveryStore, adapters: Mapping[str, AdapterKind] | None = None):
        """`adapters`: the adapter each department's endpoint is configured with."""
        self._store = store
        self._adapters = dict(adapters or {})

    # ----------------------------------------------------------------------- read

    async def list(
        self, caller: Principal, delivery_filter: DeliveryFilter, *, page_size: int, page_token: str
    ) -> tuple[builtins.list[Delivery], str]:
        caller.require_role(*READERS)
        check = FieldChecker()
        check_page_size(check, page_size)
        department = _endpoint(check, delivery_filter.endpoint_id, "endpoint_id")
        incident_id = delivery_filter.incident_id
        check.require(
            len(incident_id) <= MAX_INCIDENT_ID and incident_id.isprintable(),
            "incident_id",
            f"must be at most {MAX_INCIDENT_ID} printable characters",
        )
        f = delivery_filter
        if f.created_from is not None and f.created_before is not None:
            check.require(f.created_from < f.created_before, "create_time_range.end_time", "must be after start_time")
        check.raise_if_any()
        query = DeliveryQuery(
            tenant_id=self._tenant_scope(caller),
            states=f.states or None,
            subject_id=incident_id or None,
            department=department,
            created_from=f.created_from,
            created_before=f.created_before,
        )
        return await self._page(query, page_size, page_token, oldest_first=False)

    async def get(self, caller: Principal, delivery_id: str) -> Delivery:
        caller.require_role(*READERS)
        check = FieldChecker()
        event_id = _delivery_id(check, delivery_id, "delivery_id")
        check.raise_if_any()
        assert event_id is not None
        delivery = await self._store.get(event_id)
        tenant = self._tenant_scope(caller)
        if delivery is None or (tenant is not None and delivery.tenant_id != tenant):
            raise NotFound("delivery", delivery_id)
        return self._with_adapter(delivery)

    async def list_dead_letters(
        self, caller: Principal, endpoint_id: str, *, page_size: int, page_token: str
    ) -> tuple[builtins.list[Delivery], str]:
        caller.require_role(*READERS)
        check = FieldChecker()
        check_page_size(check, page_size)
        department = _endpoint(check, endpoint_id, "endpoint_id")
        check.raise_if_any()
        query = DeliveryQuery(
            tenant_id=self._tenant_scope(caller), states=(DeliveryState.DEAD_LETTER,), department=department
        )
        return await self._page(query, page_size, page_token, oldest_first=True)

    async def _page(
        self, query: DeliveryQuery, page_size: int, page_token: str, *, oldest_first: bool
    ) -> tuple[builtins.list[Delivery], str]:
        after = _cursor(page_token)
        limit = page_limit(page_size)
        found = await self._store.list(query, after=after, limit=limit + 1, oldest_first=oldest_first)
        page = found[:limit]
        next_token = encode_page_token(page[-1].create_time, page[-1].delivery_id) if len(found) > limit else ""
        return [self._with_adapter(d) for d in page], next_token

    @staticmethod
    def _tenant_scope(caller: Principal) -> str | None:
        """The only tenant the caller may see; None for every tenant (operators)."""
        if caller.effective.role is Role.OPERATOR:
            return None
        return caller.require_tenant()

    def _with_adapter(self, delivery: Delivery) -> Delivery:
        adapter = self._adapters.get(delivery.endpoint.department)
        return replace(delivery, endpoint=replace(delivery.endpoint, adapter=adapter))

    # ----------------------------------------------------------------------- replay

    async def replay(self, caller: Principal, delivery_ids: Sequence[str], reason: str) -> builtins.list[Delivery]:
        caller.require_role(Role.OPERATOR)
        check = FieldChecker()
        if not 1 <= len(delivery_ids) <= MAX_REPLAY:
            check.add("delivery_ids", f"must name 1 to {MAX_REPLAY} deliveries")
        event_ids: list[uuid.UUID] = []
        for i, delivery_id in enumerate(delivery_ids[:MAX_REPLAY]):
            event_id = _delivery_id(check, delivery_id, f"delivery_ids[{i}]")
            if event_id is None:
                continue
            if event_id in event_ids:
                check.add(f"delivery_ids[{i}]", "must not repeat a delivery")
            event_ids.append(event_id)
        check.text(reason, "reason", max_length=MAX_REASON)
        check.require(reason.isprintable(), "reason", "must be printable characters")
        check.raise_if_any()

        def audit(delivery: Delivery) -> LedgerEntry:
            return LedgerEntry(
                action="delivery.replay",
                subject_type="delivery",
                subject_id=delivery.delivery_id,
                actor=caller,
                reason=reason,
                tenant_id=delivery.tenant_id,
                data={
                    "incident_id": delivery.subject_id,
                    "department": delivery.endpoint.department,
                    "region_code": delivery.endpoint.region_code,
                    "replay_count": delivery.replay_count,
                },
            )

        outcome = await self._store.replay(event_ids, audit, actor=caller, reason=reason)
        if outcome.missing:
            raise NotFound("delivery", str(outcome.missing[0]))
        if outcome.not_dead:
            listed = ", ".join(f"{e} is {state.value}" for e, state in outcome.not_dead)
            raise FailedPrecondition(
                f"only dead letters can be replayed; nothing was replayed: {listed}",
                metadata={"delivery_ids": ",".join(str(e) for e, _ in outcome.not_dead)},
            )
        return [self._with_adapter(d) for d in outcome.replayed]
