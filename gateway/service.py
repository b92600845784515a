"""API key use cases: who may create, list, revoke and rotate which keys,
who may set rate limits, and how a presented secret becomes a principal.

Operators manage every key. A provider manages only its own tenant's
provider keys; other roles manage none. A key outside the caller's reach is
reported as not found, so tenants learn nothing of each other. Rate limits
on keys and tenants are set by operators alone (a provider must not raise
its own); a provider may read its own tenant's limit.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from avgate.kernel.errors import FieldChecker, FieldViolation, InvalidArgument, NotFound, Unauthenticated
from avgate.kernel.paging import check_page_size, decode_page_token, encode_page_token, page_limit
from avgate.kernel.principal import DEPARTMENTS, REGION_CODE, TENANT_ID, Principal, RegulatorScope, Role
from avgate.ledger.entry import LedgerEntry
from gateway.domain import (
    CERTIFICATE_SHA256,
    MAX_BURST,
    MAX_REQUESTS_PER_SECOND,
    ApiKey,
    RateLimit,
    StoredApiKey,
    TenantRateLimit,
    hash_secret,
    key_id_of,
    new_key_id,
    new_secret,
)
from gateway.store import ApiKeyStore

MAX_TTL = timedelta(days=730)
DEFAULT_GRACE = timedelta(hours=24)
MAX_GRACE = timedelta(days=30)
# Writing last-use on every call would turn each call into a write; once a minute is enough.
LAST_USED_RESOLUTION_SECONDS = 60.0
MAX_CACHED_KEYS = 100_000


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    secret: str


@dataclass(frozen=True)
class RotatedKey:
    key: ApiKey
    secret: str
    previous_secret_expire_time: datetime


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _now() -> datetime:
    return datetime.now(UTC)


def check_rate_limit(check: FieldChecker, limit: RateLimit | None, path: str) -> None:
    if limit is None:
        return
    check.require(
        0 < limit.requests_per_second <= MAX_REQUESTS_PER_SECOND,
        f"{path}.requests_per_second",
        f"must be positive and at most {MAX_REQUESTS_PER_SECOND:,.0f}",
    )
    check.require(1 <= limit.burst <= MAX_BURST, f"{path}.burst", f"must be 1 to {MAX_BURST:,}")


def _limit_data(limit: RateLimit | None) -> dict[str, object]:
    if limit is None:
        return {"rate_limit": None}
    return {"rate_limit": {"requests_per_second": limit.requests_per_second, "burst": limit.burst}}


class ApiKeyService:
    def __init__(
        self,
        store: ApiKeyStore,
        clock: Callable[[], datetime] = _now,
        cache_seconds: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        require_bound_regulator_keys: bool = False,
    ):
        self._store = store
        # Production: a regulator key must be bound to a client certificate (read access to every tenant's
        # incidents should not rest on a bearer secret alone).
        self._require_bound_regulator_keys = require_bound_regulator_keys
        self._clock = clock
        # Elapsed time for the cache and last-use throttling: injected so tests step it, never sleep.
        self._monotonic = monotonic
        self._last_touched: dict[str, float] = {}
        # Key records read for authentication, reused for cache_seconds so a call does not
        # cost a database round trip. Revoking or rotating here evicts at once; another
        # gateway replica sees the change within cache_seconds.
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, StoredApiKey | None]] = {}
        self._tenant_limits: dict[str, tuple[float, RateLimit | None]] = {}

    async def create(
        self,
        caller: Principal,
        *,
        display_name: str,
        role: Role | None,
        tenant_id: str,
        regulator_scope: RegulatorScope | None,
        ttl: timedelta | None,
        development: bool = False,
        rate_limit: RateLimit | None = None,
        client_certificate_sha256: str = "",
    ) -> CreatedKey:
        check = FieldChecker()
        # Accepts what `openssl x509 -fingerprint -sha256` prints (upper case, colons) as well.
        certificate = client_certificate_sha256.strip().replace(":", "").lower() or None
        if certificate is not None:
            check.require(
                bool(CERTIFICATE_SHA256.fullmatch(certificate)),
                "client_certificate_sha256",
                "must be the certificate's SHA-256: 64 hexadecimal digits",
            )
        elif role is Role.REGULATOR and self._require_bound_regulator_keys:
            check.add(
                "client_certificate_sha256",
                "a regulator key must be bound to a client certificate in production (avgate keys create --bind-cert)",
            )
        check.require(1 <= len(display_name.strip()) <= 200, "display_name", "must be 1 to 200 characters")
        if role is None:
            check.add("role", "must be set")
        elif role is Role.SERVICE:
            check.add("role", "ROLE_SERVICE keys cannot be created; services sign their own tokens")
        if role is Role.PROVIDER:
            check.require(
                bool(TENANT_ID.fullmatch(tenant_id)), "tenant_id", "required for provider keys: 2-63 of a-z, 0-9, '-'"
            )
        elif tenant_id:
            check.add("tenant_id", "only provider keys belong to a tenant")
        if role is Role.REGULATOR:
            if regulator_scope is None or not regulator_scope.departments:
                check.add("regulator_scope.departments", "a regulator key needs at least one department")
            if regulator_scope is None or not regulator_scope.region_codes:
                check.add("regulator_scope.region_codes", "a regulator key needs at least one region code")
            for i, department in enumerate(regulator_scope.departments if regulator_scope else ()):
                check.require(department in DEPARTMENTS, f"regulator_scope.departments[{i}]", "not a known department")
            for i, code in enumerate(regulator_scope.region_codes if regulator_scope else ()):
                check.require(
                    bool(REGION_CODE.fullmatch(code)),
                    f"regulator_scope.region_codes[{i}]",
                    "must be a 6-digit GB/T 2260 code",
                )
        elif regulator_scope is not None and (regulator_scope.departments or regulator_scope.region_codes):
            check.add("regulator_scope", "only regulator keys have a scope")
        if ttl is not None:
            check.require(timedelta(0) < ttl <= MAX_TTL, "ttl", "must be positive and at most 730 days")
        check_rate_limit(check, rate_limit, "rate_limit")
        check.raise_if_any()
        assert role is not None
        self._authorize_manage(caller, role, tenant_id or None)
        if rate_limit is not None:
            caller.require_role(Role.OPERATOR)  # a provider must not choose its own limit
        now = self._clock()
        key_id = new_key_id()
        secret = new_secret(key_id)
        key = ApiKey(
            key_id=key_id,
            display_name=display_name.strip(),
            role=role,
            tenant_id=tenant_id or None,
            regulator_scope=regulator_scope if role is Role.REGULATOR else None,
            create_time=now,
            created_by=f"{caller.role.value}:{caller.subject}",
            expire_time=now + ttl if ttl is not None else None,
            development=development,
            rate_limit=rate_limit,
            client_certificate_sha256=certificate,
        )
        data: dict[str, object] = {"role": role.value, "development": development, "expire_time": _iso(key.expire_time)}
        if rate_limit is not None:
            data.update(_limit_data(rate_limit))
        if certificate is not None:
            data["client_certificate_sha256"] = certificate
        audit = self._audit(caller, "api_key.create", key, data=data)
        await self._store.add(StoredApiKey(key=key, secret_hash=hash_secret(secret)), audit)
        return CreatedKey(key, secret)

    async def list(
        self, caller: Principal, *, tenant_id: str, include_revoked: bool, page_size: int, page_token: str
    ) -> tuple[builtins.list[ApiKey], str]:
        check = FieldChecker()
        check_page_size(check, page_size)
        if tenant_id:
            check.require(bool(TENANT_ID.fullmatch(tenant_id)), "tenant_id", "2-63 of a-z, 0-9, '-'")
        check.raise_if_any()
        after = decode_page_token(page_token) if page_token else None
        if caller.role is Role.OPERATOR:
            scope_tenant = tenant_id or None
        elif caller.role is Role.PROVIDER:
            scope_tenant = caller.require_tenant()
            if tenant_id and tenant_id != scope_tenant:
                return [], ""
        else:
            caller.require_role(Role.OPERATOR, Role.PROVIDER)
            raise AssertionError("unreachable")
        limit = page_limit(page_size)
        keys = await self._store.list(
            tenant_id=scope_tenant, include_revoked=include_revoked, after=after, limit=limit + 1
        )
        next_token = ""
        if len(keys) > limit:
            last = keys[limit - 1]
            next_token = encode_page_token(last.create_time, last.key_id)
        return keys[:limit], next_token

    async def revoke(self, caller: Principal, *, key_id: str, reason: str) -> ApiKey:
        check = FieldChecker()
        check.require(bool(key_id), "key_id", "must be set")
        check.text(reason, "reason", max_length=500)  # it goes to the ledger
        check.raise_if_any()
        stored = await self._visible(caller, key_id)
        if stored.key.revoke_time is not None:
            return stored.key  # revoking twice changes nothing
        updated = stored.with_key(revoke_time=self._clock(), revoke_reason=reason.strip())
        await self._store.save(updated, self._audit(caller, "api_key.revoke", updated.key, reason=reason.strip()))
        self._cache.pop(key_id, None)
        return updated.key

    async def rotate(self, caller: Principal, *, key_id: str, grace: timedelta | None) -> RotatedKey:
        check = FieldChecker()
        check.require(bool(key_id), "key_id", "must be set")
        if grace is not None:
            check.require(timedelta(0) <= grace <= MAX_GRACE, "grace_period", "must be between 0 and 30 days")
        check.raise_if_any()
        stored = await self._visible(caller, key_id)
        now = self._clock()
        if not stored.key.is_active(now):
            raise NotFound("api_key", key_id, "api key is revoked or expired")
        secret = new_secret(key_id)
        previous_expire = now + (grace if grace is not None else DEFAULT_GRACE)
        rotated = StoredApiKey(
            key=stored.key,
            secret_hash=hash_secret(secret),
            previous_secret_hash=stored.secret_hash,
            previous_secret_expire_time=previous_expire,
        )
        audit = self._audit(
            caller, "api_key.rotate", stored.key, data={"previous_secret_expire_time": _iso(previous_expire)}
        )
        await self._store.save(rotated, audit)
        self._cache.pop(key_id, None)
        return RotatedKey(stored.key, secret, previous_expire)

    async def set_key_rate_limit(self, caller: Principal, *, key_id: str, rate_limit: RateLimit | None) -> ApiKey:
        """Sets a key's own limit; None puts it back on the gateway's default."""
        check = FieldChecker()
        check.require(bool(key_id), "key_id", "must be set")
        check_rate_limit(check, rate_limit, "rate_limit")
        check.raise_if_any()
        caller.require_role(Role.OPERATOR)
        stored = await self._visible(caller, key_id)
        updated = stored.key if stored.key.rate_limit == rate_limit else replace(stored.key, rate_limit=rate_limit)
        audit = self._audit(caller, "api_key.set_rate_limit", updated, data=_limit_data(rate_limit))
        await self._store.save_rate_limit(key_id, rate_limit, audit)
        self._cache.pop(key_id, None)
        return updated

    async def set_tenant_rate_limit(
        self, caller: Principal, *, tenant_id: str, rate_limit: RateLimit | None
    ) -> TenantRateLimit:
        """Sets the limit on all of a tenant's keys together; None puts it back on the default."""
        check = FieldChecker()
        check.require(bool(TENANT_ID.fullmatch(tenant_id)), "tenant_id", "2-63 of a-z, 0-9, '-'")
        check_rate_limit(check, rate_limit, "rate_limit")
        check.raise_if_any()
        caller.require_role(Role.OPERATOR)
        record = TenantRateLimit(
            tenant_id=tenant_id,
            rate_limit=rate_limit,
            update_time=self._clock(),
            updated_by=f"{caller.role.value}:{caller.subject}",
        )
        audit = LedgerEntry(
            action="tenant.set_rate_limit",
            subject_type="tenant",
            subject_id=tenant_id,
            actor=caller,
            tenant_id=tenant_id,
            data=_limit_data(rate_limit),
        )
        await self._store.set_tenant_rate_limit(record, audit)
        self._tenant_limits.pop(tenant_id, None)
        return record

    async def get_tenant_rate_limit(self, caller: Principal, *, tenant_id: str) -> TenantRateLimit:
        """A tenant's own limit (rate_limit None: the default applies); a provider reads only its own."""
        check = FieldChecker()
        check.require(bool(TENANT_ID.fullmatch(tenant_id)), "tenant_id", "2-63 of a-z, 0-9, '-'")
        check.raise_if_any()
        if caller.role is not Role.OPERATOR:
            caller.require_role(Role.OPERATOR, Role.PROVIDER)
            if caller.require_tenant() != tenant_id:
                raise NotFound("tenant", tenant_id)
        return await self._store.get_tenant_rate_limit(tenant_id) or TenantRateLimit(tenant_id, None)

    async def rate_limits(self, key_id: str, tenant_id: str | None) -> tuple[RateLimit | None, RateLimit | None]:
        """The limits an operator set on a key and on its tenant (None: the default), cached like the keys:
        the key's record is the one authentication just read."""
        stored = await self._cached_get(key_id)
        key_limit = stored.key.rate_limit if stored is not None else None
        if tenant_id is None:
            return key_limit, None
        hit = self._tenant_limits.get(tenant_id)
        if hit is not None and self._monotonic() - hit[0] < self._cache_seconds:
            return key_limit, hit[1]
        record = await self._store.get_tenant_rate_limit(tenant_id)
        tenant_limit = record.rate_limit if record is not None else None
        if self._cache_seconds > 0:
            if len(self._tenant_limits) >= MAX_CACHED_KEYS:
                self._tenant_limits.clear()
            self._tenant_limits[tenant_id] = (self._monotonic(), tenant_limit)
        return key_limit, tenant_limit

    async def authenticate(self, secret: str | None) -> ApiKey:
        """The active key a presented secret belongs to, or Unauthenticated."""
        key_id = key_id_of(secret or "")
        if key_id is None:
            raise Unauthenticated("missing or malformed API key; send 'authorization: Bearer <key>'")
        stored = await self._cached_get(key_id)
        now = self._clock()
        if stored is None or not stored.accepts(secret or "", now) or not stored.key.is_active(now):
            raise Unauthenticated("API key is unknown, revoked or expired")
        await self._touch(stored, now)
        return stored.key

    @staticmethod
    def _audit(
        caller: Principal, action: str, key: ApiKey, *, reason: str = "", data: dict[str, object] | None = None
    ) -> LedgerEntry:
        return LedgerEntry(
            action=action,
            subject_type="api_key",
            subject_id=key.key_id,
            actor=caller,
            tenant_id=key.tenant_id,
            reason=reason,
            data=data or {},
        )

    async def _cached_get(self, key_id: str) -> StoredApiKey | None:
        if self._cache_seconds <= 0:
            return await self._store.get(key_id)
        hit = self._cache.get(key_id)
        if hit is not None and self._monotonic() - hit[0] < self._cache_seconds:
            return hit[1]
        stored = await self._store.get(key_id)
        if len(self._cache) >= MAX_CACHED_KEYS:
            self._cache.clear()  # unknown ids probed at random must not grow memory without bound
        self._cache[key_id] = (self._monotonic(), stored)
        return stored

    async def active_development_keys(self) -> builtins.list[ApiKey]:
        return await self._store.active_development_keys(self._clock())

    async def _touch(self, stored: StoredApiKey, now: datetime) -> None:
        last = self._last_touched.get(stored.key.key_id)
        if last is not None and self._monotonic() - last < LAST_USED_RESOLUTION_SECONDS:
            return
        self._last_touched[stored.key.key_id] = self._monotonic()
        # Only the last-use column: saving the whole record read above could undo a revoke or rotate made meanwhile.
        await self._store.record_use(stored.key.key_id, now)

    async def _visible(self, caller: Principal, key_id: str) -> StoredApiKey:
        stored = await self._store.get(key_id)
        if stored is None or not self._may_manage(caller, stored.key.role, stored.key.tenant_id):
            raise NotFound("api_key", key_id)
        return stored

    def _authorize_manage(self, caller: Principal, role: Role, tenant_id: str | None) -> None:
        if caller.role is Role.OPERATOR:
            return
        if caller.role is Role.PROVIDER:
            if role is not Role.PROVIDER:
                caller.require_role(Role.OPERATOR)  # raises: providers create only provider keys
            if tenant_id != caller.require_tenant():
                raise InvalidArgument(FieldViolation("tenant_id", "a provider may create keys only for its own tenant"))
            return
        caller.require_role(Role.OPERATOR, Role.PROVIDER)

    @staticmethod
    def _may_manage(caller: Principal, role: Role, tenant_id: str | None) -> bool:
        if caller.role is Role.OPERATOR:
            return True
        return caller.role is Role.PROVIDER and role is Role.PROVIDER and tenant_id == caller.tenant_id
