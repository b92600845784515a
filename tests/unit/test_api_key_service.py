"""API key use cases against the in-memory store: what each caller may do
with which keys, what a request must look like, and which secrets open the
gateway."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from avgate.kernel.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from avgate.kernel.principal import Principal, RegulatorScope, Role
from gateway.domain import ApiKey, StoredApiKey
from gateway.service import ApiKeyService, CreatedKey
from gateway.store import InMemoryApiKeyStore
from tests.support import FakeClock

OPERATOR = Principal(role=Role.OPERATOR, subject="ops-1")
ACME = Principal(role=Role.PROVIDER, subject="ak-acme", tenant_id="acme")
GLOBEX = Principal(role=Role.PROVIDER, subject="ak-globex", tenant_id="globex")
REGULATOR = Principal(
    role=Role.REGULATOR, subject="ak-reg", regulator_scope=RegulatorScope(("cyberspace",), ("110000",))
)
PUBLIC = Principal(role=Role.PUBLIC, subject="anonymous")

BEIJING_CYBERSPACE = RegulatorScope(("cyberspace",), ("110000",))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))


@pytest.fixture
def store() -> InMemoryApiKeyStore:
    return InMemoryApiKeyStore()


@pytest.fixture
def service(store: InMemoryApiKeyStore, clock: FakeClock) -> ApiKeyService:
    return ApiKeyService(store, clock=clock)


def request(**overrides: Any) -> dict[str, Any]:
    """A valid create request for an acme provider key, with overrides."""
    fields: dict[str, Any] = {
        "display_name": "acme uploader",
        "role": Role.PROVIDER,
        "tenant_id": "acme",
        "regulator_scope": None,
        "ttl": None,
    }
    return fields | overrides


async def create_provider_key(service: ApiKeyService, tenant: str, name: str = "uploader") -> CreatedKey:
    return await service.create(OPERATOR, **request(display_name=name, tenant_id=tenant))


async def stored_keys(store: InMemoryApiKeyStore) -> list[ApiKey]:
    return await store.list(tenant_id=None, include_revoked=True, after=None, limit=1000)


def violated_fields(error: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in error.value.violations]


class TestCreatingKeys:
    async def test_provider_key_belongs_to_its_tenant_and_opens_the_gateway(
        self, service: ApiKeyService, clock: FakeClock
    ) -> None:
        created = await service.create(OPERATOR, **request(display_name="  acme uploader  "))

        assert created.key.role is Role.PROVIDER
        assert created.key.tenant_id == "acme"
        assert created.key.display_name == "acme uploader"
        assert created.key.create_time == clock.now
        assert created.key.created_by == "operator:ops-1"
        assert created.secret.startswith(f"avgk_{created.key.key_id}_")
        assert await service.authenticate(created.secret) == created.key

    async def test_only_a_hash_of_the_secret_is_stored(
        self, service: ApiKeyService, store: InMemoryApiKeyStore
    ) -> None:
        created = await service.create(OPERATOR, **request())

        stored = await store.get(created.key.key_id)

        assert stored is not None
        assert created.secret.encode() not in stored.secret_hash

    async def test_ttl_sets_the_expire_time(self, service: ApiKeyService, clock: FakeClock) -> None:
        created = await service.create(OPERATOR, **request(ttl=timedelta(days=90)))

        assert created.key.expire_time == clock.now + timedelta(days=90)

    async def test_regulator_key_keeps_its_scope(self, service: ApiKeyService) -> None:
        created = await service.create(
            OPERATOR, **request(role=Role.REGULATOR, tenant_id="", regulator_scope=BEIJING_CYBERSPACE)
        )

        assert created.key.regulator_scope == BEIJING_CYBERSPACE
        assert created.key.tenant_id is None

    async def test_service_role_keys_are_refused(self, service: ApiKeyService, store: InMemoryApiKeyStore) -> None:
        with pytest.raises(InvalidArgument) as error:
            await service.create(OPERATOR, **request(role=Role.SERVICE, tenant_id=""))

        assert violated_fields(error) == ["role"]
        assert "ROLE_SERVICE" in error.value.violations[0].description
        assert await stored_keys(store) == []


class TestCreateValidation:
    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"display_name": ""}, "display_name"),
            ({"display_name": "   "}, "display_name"),
            ({"display_name": "x" * 201}, "display_name"),
            ({"role": None, "tenant_id": ""}, "role"),
            ({"tenant_id": ""}, "tenant_id"),
            ({"tenant_id": "Acme"}, "tenant_id"),
            ({"tenant_id": "a"}, "tenant_id"),
            ({"tenant_id": "-acme"}, "tenant_id"),
            ({"tenant_id": "a" * 64}, "tenant_id"),
            ({"tenant_id": "acme\n"}, "tenant_id"),
            ({"role": Role.OPERATOR, "tenant_id": "acme"}, "tenant_id"),
            ({"role": Role.PUBLIC, "regulator_scope": BEIJING_CYBERSPACE, "tenant_id": ""}, "regulator_scope"),
            (
                {"role": Role.REGULATOR, "tenant_id": "", "regulator_scope": RegulatorScope((), ("110000",))},
                "regulator_scope.departments",
            ),
            (
                {"role": Role.REGULATOR, "tenant_id": "", "regulator_scope": RegulatorScope(("cyberspace",), ())},
                "regulator_scope.region_codes",
            ),
            (
                {
                    "role": Role.REGULATOR,
                    "tenant_id": "",
                    "regulator_scope": RegulatorScope(("cyberspace", "unknown:0"), ("110000",)),
                },
                "regulator_scope.departments[1]",
            ),
            (
                {
                    "role": Role.REGULATOR,
                    "tenant_id": "",
                    "regulator_scope": RegulatorScope(("cyberspace",), ("110000", "11000")),
                },
                "regulator_scope.region_codes[1]",
            ),
            (
                {
                    "role": Role.REGULATOR,
                    "tenant_id": "",
                    "regulator_scope": RegulatorScope(("cyberspace",), ("1100a0",)),
                },
                "regulator_scope.region_codes[0]",
            ),
            (
                {
                    "role": Role.REGULATOR,
                    "tenant_id": "",
                    "regulator_scope": RegulatorScope(("cyberspace",), ("110000\n",)),
                },
                "regulator_scope.region_codes[0]",
            ),
            (
                {
                    "role": Role.REGULATOR,
                    "tenant_id": "",
                    "regulator_scope": RegulatorScope(("cyberspace",), ("\u0661\u0661\u0660\u0660\u0660\u0660",)),
                },
                "regulator_scope.region_codes[0]",
            ),
            ({"ttl": timedelta(0)}, "ttl"),
            ({"ttl": timedelta(seconds=-1)}, "ttl"),
            ({"ttl": timedelta(days=730, seconds=1)}, "ttl"),
        ],
        ids=[
            "empty-display-name",
            "blank-display-name",
            "display-name-over-200",
            "role-unset",
            "provider-without-tenant",
            "tenant-with-capitals",
            "tenant-too-short",
            "tenant-leading-dash",
            "tenant-over-63",
            "tenant-trailing-newline",
            "tenant-on-non-provider-key",
            "scope-on-non-regulator-key",
            "regulator-without-departments",
            "regulator-without-regions",
            "unknown-department",
            "five-digit-region",
            "region-with-letter",
            "region-trailing-newline",
            "region-non-ascii-digits",
            "zero-ttl",
            "negative-ttl",
            "ttl-over-730-days",
        ],
    )
    async def test_broken_rule_names_its_field_and_stores_nothing(
        self, service: ApiKeyService, store: InMemoryApiKeyStore, overrides: dict[str, Any], field: str
    ) -> None:
        with pytest.raises(InvalidArgument) as error:
            await service.create(OPERATOR, **request(**overrides))

        assert violated_fields(error) == [field]
        assert await stored_keys(store) == []

    async def test_regulator_without_any_scope_lacks_departments_and_regions(self, service: ApiKeyService) -> None:
        with pytest.raises(InvalidArgument) as error:
            await service.create(OPERATOR, **request(role=Role.REGULATOR, tenant_id="", regulator_scope=None))

        assert violated_fields(error) == ["regulator_scope.departments", "regulator_scope.region_codes"]

    async def test_every_broken_rule_is_reported_at_once(
        self, service: ApiKeyService, store: InMemoryApiKeyStore
    ) -> None:
        with pytest.raises(InvalidArgument) as error:
            await service.create(
                OPERATOR,
                display_name="",
                role=Role.REGULATOR,
                tenant_id="acme",
                regulator_scope=RegulatorScope(("cyberspace",), ("110000", "x")),
                ttl=timedelta(days=-1),
            )

        assert violated_fields(error) == [
            "display_name",
            "tenant_id",
            "regulator_scope.region_codes[1]",
            "ttl",
        ]
        assert await stored_keys(store) == []

    async def test_limits_are_inclusive(self, service: ApiKeyService) -> None:
        created = await service.create(
            OPERATOR, **request(display_name="x" * 200, tenant_id="a" * 63, ttl=timedelta(days=730))
        )

        assert created.key.tenant_id == "a" * 63


class TestWhoMayCreateKeys:
    @pytest.mark.parametrize(
        "overrides",
        [
            {},
            {"role": Role.REGULATOR, "tenant_id": "", "regulator_scope": BEIJING_CYBERSPACE},
            {"role": Role.PUBLIC, "tenant_id": ""},
            {"role": Role.OPERATOR, "tenant_id": ""},
        ],
        ids=["provider", "regulator", "public", "operator"],
    )
    async def test_operator_creates_keys_of_any_role(self, service: ApiKeyService, overrides: dict[str, Any]) -> None:
        created = await service.create(OPERATOR, **request(**overrides))

        assert created.key.role is request(**overrides)["role"]

    async def test_provider_creates_a_provider_key_for_its_own_tenant(self, service: ApiKeyService) -> None:
        created = await service.create(ACME, **request())

        assert (created.key.role, created.key.tenant_id) == (Role.PROVIDER, "acme")
        assert created.key.created_by == "provider:ak-acme"

    async def test_provider_cannot_create_keys_for_another_tenant(
        self, service: ApiKeyService, store: InMemoryApiKeyStore
    ) -> None:
        with pytest.raises(InvalidArgument) as error:
            await service.create(ACME, **request(tenant_id="globex"))

        assert violated_fields(error) == ["tenant_id"]
        assert await stored_keys(store) == []

    @pytest.mark.parametrize(
        "overrides",
        [
            {"role": Role.REGULATOR, "tenant_id": "", "regulator_scope": BEIJING_CYBERSPACE},
            {"role": Role.PUBLIC, "tenant_id": ""},
            {"role": Role.OPERATOR, "tenant_id": ""},
        ],
        ids=["regulator", "public", "operator"],
    )
    async def test_provider_cannot_create_other_roles(
        self, service: ApiKeyService, store: InMemoryApiKeyStore, overrides: dict[str, Any]
    ) -> None:
        with pytest.raises(PermissionDenied):
            await service.create(ACME, **request(**overrides))

        assert await stored_keys(store) == []

    @pytest.mark.parametrize("caller", [REGULATOR, PUBLIC], ids=["regulator", "public"])
    async def test_regulators_and_the_public_cannot_create_keys(
        self, service: ApiKeyService, store: InMemoryApiKeyStore, caller: Principal
    ) -> None:
        with pytest.raises(PermissionDenied):
            await service.create(caller, **request(role=Role.PUBLIC, tenant_id=""))

        assert await stored_keys(store) == []


class TestListingKeys:
    async def test_provider_sees_only_its_own_tenants_keys(self, service: ApiKeyService) -> None:
        acme = await create_provider_key(service, "acme")
        await create_provider_key(service, "globex")

        keys, next_token = await service.list(ACME, tenant_id="", include_revoked=False, page_size=0, page_token="")

        assert keys == [acme.key]
        assert next_token == ""

    async def test_provider_asking_for_another_tenant_gets_nothing(self, service: ApiKeyService) -> None:
        await create_provider_key(service, "globex")

        keys, next_token = await service.list(
            ACME, tenant_id="globex", include_revoked=True, page_size=0, page_token=""
        )

        assert (keys, next_token) == ([], "")

    async def test_operator_sees_every_key(self, service: ApiKeyService, clock: FakeClock) -> None:
        acme = await create_provider_key(service, "acme")
        clock.advance(timedelta(seconds=1))
        public = await service.create(OPERATOR, **request(role=Role.PUBLIC, tenant_id=""))
        clock.advance(timedelta(seconds=1))
        globex = await create_provider_key(service, "globex")

        keys, _ = await service.list(OPERATOR, tenant_id="", include_revoked=False, page_size=0, page_token="")

        assert keys == [acme.key, public.key, globex.key]

    async def test_operator_can_filter_by_tenant(self, service: ApiKeyService) -> None:
        await create_provider_key(service, "acme")
        globex = await create_provider_key(service, "globex")

        keys, _ = await service.list(OPERATOR, tenant_id="globex", include_revoked=False, page_size=0, page_token="")

        assert keys == [globex.key]

    @pytest.mark.parametrize("step", [timedelta(seconds=1), timedelta(0)], ids=["distinct-times", "same-instant"])
    async def test_pages_continue_without_overlap(
        self, service: ApiKeyService, clock: FakeClock, step: timedelta
    ) -> None:
        created = []
        for i in range(5):
            created.append((await create_provider_key(service, "acme", f"key {i}")).key)
            clock.advance(step)

        first, token = await service.list(ACME, tenant_id="", include_revoked=False, page_size=2, page_token="")
        second, token2 = await service.list(ACME, tenant_id="", include_revoked=False, page_size=2, page_token=token)
        third, token3 = await service.list(ACME, tenant_id="", include_revoked=False, page_size=2, page_token=token2)

        assert (len(first), len(second), len(third)) == (2, 2, 1)
        assert token and token2
        assert token3 == ""
        assert sorted(k.key_id for k in first + second + third) == sorted(k.key_id for k in created)

    async def test_a_full_last_page_has_no_next_token(self, service: ApiKeyService) -> None:
        for i in range(2):
            await create_provider_key(service, "acme", f"key {i}")

        keys, token = await service.list(ACME, tenant_id="", include_revoked=False, page_size=2, page_token="")

        assert (len(keys), token) == (2, "")

    async def test_revoked_keys_are_hidden_unless_asked_for(self, service: ApiKeyService) -> None:
        kept = await create_provider_key(service, "acme")
        revoked = await create_provider_key(service, "acme")
        await service.revoke(ACME, key_id=revoked.key.key_id, reason="leaked")

        visible, _ = await service.list(ACME, tenant_id="", include_revoked=False, page_size=0, page_token="")
        everything, _ = await service.list(ACME, tenant_id="", include_revoked=True, page_size=0, page_token="")

        assert [k.key_id for k in visible] == [kept.key.key_id]
        assert {k.key_id for k in everything} == {kept.key.key_id, revoked.key.key_id}

    @pytest.mark.parametrize(
        ("page_size", "page_token", "tenant_id", "fields"),
        [
            (-1, "", "", ["page.page_size"]),
            (501, "", "", ["page.page_size"]),
            (0, "not base64!", "", ["page.page_token"]),
            (0, "W10=", "", ["page.page_token"]),
            (0, "", "Acme", ["tenant_id"]),
            (-1, "", "Acme", ["page.page_size", "tenant_id"]),
        ],
        ids=[
            "negative-page-size",
            "page-size-over-500",
            "garbled-token",
            "token-of-wrong-shape",
            "malformed-tenant",
            "two-rules-at-once",
        ],
    )
    async def test_malformed_request_names_its_fields(
        self, service: ApiKeyService, page_size: int, page_token: str, tenant_id: str, fields: list[str]
    ) -> None:
        with pytest.raises(InvalidArgument) as error:
            await service.list(
                OPERATOR, tenant_id=tenant_id, include_revoked=False, page_size=page_size, page_token=page_token
            )

        assert violated_fields(error) == fields

    @pytest.mark.parametrize("caller", [REGULATOR, PUBLIC], ids=["regulator", "public"])
    async def test_regulators_and_the_public_cannot_list_keys(self, service: ApiKeyService, caller: Principal) -> None:
        with pytest.raises(PermissionDenied):
            await service.list(caller, tenant_id="", include_revoked=False, page_size=0, page_token="")


class TestRevokingKeys:
    async def test_revoked_key_no_longer_authenticates(self, service: ApiKeyService, clock: FakeClock) -> None:
        created = await create_provider_key(service, "acme")

        revoked = await service.revoke(ACME, key_id=created.key.key_id, reason="  leaked in a log  ")

        assert revoked.revoke_time == clock.now
        assert revoked.revoke_reason == "leaked in a log"
        with pytest.raises(Unauthenticated):
            await service.authenticate(created.secret)

    async def test_revoking_twice_keeps_the_first_revoke_time(self, service: ApiKeyService, clock: FakeClock) -> None:
        created = await create_provider_key(service, "acme")
        first = await service.revoke(OPERATOR, key_id=created.key.key_id, reason="leaked")
        clock.advance(timedelta(hours=1))

        second = await service.revoke(OPERATOR, key_id=created.key.key_id, reason="again")

        assert second.revoke_time == first.revoke_time
        assert second.revoke_reason == "leaked"

    async def test_another_tenants_key_is_not_found_and_stays_active(self, service: ApiKeyService) -> None:
        globex = await create_provider_key(service, "globex")

        with pytest.raises(NotFound) as error:
            await service.revoke(ACME, key_id=globex.key.key_id, reason="hostile")

        assert (error.value.resource_type, error.value.resource_name) == ("api_key", globex.key.key_id)
        assert await service.authenticate(globex.secret) == globex.key

    async def test_provider_cannot_see_non_provider_keys(self, service: ApiKeyService) -> None:
        public = await service.create(OPERATOR, **request(role=Role.PUBLIC, tenant_id=""))

        with pytest.raises(NotFound):
            await service.revoke(ACME, key_id=public.key.key_id, reason="why not")

    async def test_unknown_key_is_not_found(self, service: ApiKeyService) -> None:
        with pytest.raises(NotFound):
            await service.revoke(OPERATOR, key_id="aknosuchkey", reason="cleanup")

    @pytest.mark.parametrize(
        ("key_id", "reason", "fields"),
        [
            ("", "leaked", ["key_id"]),
            ("ak1", "  ", ["reason"]),
            ("ak1", "x" * 501, ["reason"]),
            ("", "", ["key_id", "reason"]),
        ],
        ids=["no-key-id", "blank-reason", "reason-over-500", "both"],
    )
    async def test_malformed_request_names_its_fields(
        self, service: ApiKeyService, key_id: str, reason: str, fields: list[str]
    ) -> None:
        with pytest.raises(InvalidArgument) as error:
            await service.revoke(OPERATOR, key_id=key_id, reason=reason)

        assert violated_fields(error) == fields


class TestRotatingKeys:
    async def test_new_secret_authenticates(self, service: ApiKeyService) -> None:
        created = await create_provider_key(service, "acme")

        rotated = await service.rotate(ACME, key_id=created.key.key_id, grace=None)

        assert rotated.secret != created.secret
        assert await service.authenticate(rotated.secret) == created.key

    async def test_old_secret_works_during_grace_and_not_after(self, service: ApiKeyService, clock: FakeClock) -> None:
        created = await create_provider_key(service, "acme")
        rotated = await service.rotate(ACME, key_id=created.key.key_id, grace=timedelta(hours=2))
        assert rotated.previous_secret_expire_time == clock.now + timedelta(hours=2)

        clock.advance(timedelta(hours=2) - timedelta(seconds=1))
        assert (await service.authenticate(created.secret)).key_id == created.key.key_id

        clock.advance(timedelta(seconds=1))
        with pytest.raises(Unauthenticated):
            await service.authenticate(created.secret)
        assert (await service.authenticate(rotated.secret)).key_id == created.key.key_id

    async def test_default_grace_is_a_day(self, service: ApiKeyService, clock: FakeClock) -> None:
        created = await create_provider_key(service, "acme")

        rotated = await service.rotate(OPERATOR, key_id=created.key.key_id, grace=None)

        assert rotated.previous_secret_expire_time == clock.now + timedelta(hours=24)

    async def test_zero_grace_retires_the_old_secret_at_once(self, service: ApiKeyService) -> None:
        created = await create_provider_key(service, "acme")

        await service.rotate(OPERATOR, key_id=created.key.key_id, grace=timedelta(0))

        with pytest.raises(Unauthenticated):
            await service.authenticate(created.secret)

    @pytest.mark.parametrize(
        "grace", [timedelta(days=30, seconds=1), timedelta(seconds=-1)], ids=["over-30-days", "negative"]
    )
    async def test_grace_outside_0_to_30_days_is_rejected(
        self, service: ApiKeyService, store: InMemoryApiKeyStore, grace: timedelta
    ) -> None:
        created = await create_provider_key(service, "acme")

        with pytest.raises(InvalidArgument) as error:
            await service.rotate(OPERATOR, key_id=created.key.key_id, grace=grace)

        assert violated_fields(error) == ["grace_period"]
        stored = await store.get(created.key.key_id)
        assert stored is not None and stored.previous_secret_hash is None

    async def test_thirty_days_of_grace_is_allowed(self, service: ApiKeyService, clock: FakeClock) -> None:
        created = await create_provider_key(service, "acme")

        rotated = await service.rotate(OPERATOR, key_id=created.key.key_id, grace=timedelta(days=30))

        assert rotated.previous_secret_expire_time == clock.now + timedelta(days=30)

    async def test_missing_key_id_is_rejected(self, service: ApiKeyService) -> None:
        with pytest.raises(InvalidArgument) as error:
            await service.rotate(OPERATOR, key_id="", grace=None)

        assert violated_fields(error) == ["key_id"]

    async def test_another_tenants_key_is_not_found_and_keeps_its_secret(self, service: ApiKeyService) -> None:
        globex = await create_provider_key(service, "globex")

        with pytest.raises(NotFound):
            await service.rotate(ACME, key_id=globex.key.key_id, grace=None)

        assert await service.authenticate(globex.secret) == globex.key

    async def test_revoked_key_cannot_be_rotated_back_to_life(self, service: ApiKeyService) -> None:
        created = await create_provider_key(service, "acme")
        await service.revoke(ACME, key_id=created.key.key_id, reason="leaked")

        with pytest.raises(NotFound):
            await service.rotate(ACME, key_id=created.key.key_id, grace=None)


class TestAuthenticating:
    @pytest.mark.parametrize(
        "secret",
        [None, "", "Bearer avgk", "avgk_ak1_short", "sk_ak1_" + "x" * 43, "avgk__" + "x" * 43],
        ids=["none", "empty", "no-parts", "short-random-part", "wrong-prefix", "empty-key-id"],
    )
    async def test_malformed_secret_is_unauthenticated(self, service: ApiKeyService, secret: str | None) -> None:
        with pytest.raises(Unauthenticated):
            await service.authenticate(secret)

    async def test_unknown_key_id_is_unauthenticated(self, service: ApiKeyService) -> None:
        with pytest.raises(Unauthenticated):
            await service.authenticate("avgk_aknosuchkey_" + "x" * 43)

    async def test_wrong_secret_for_a_real_key_is_unauthenticated(self, service: ApiKeyService) -> None:
        created = await create_provider_key(service, "acme")

        with pytest.raises(Unauthenticated):
            await service.authenticate(f"avgk_{created.key.key_id}_" + "x" * 43)

    async def test_expired_key_is_unauthenticated(self, service: ApiKeyService, clock: FakeClock) -> None:
        created = await service.create(OPERATOR, **request(ttl=timedelta(days=1)))
        clock.advance(timedelta(days=1) - timedelta(microseconds=1))
        assert await service.authenticate(created.secret) == created.key

        clock.advance(timedelta(microseconds=1))
        with pytest.raises(Unauthenticated):
            await service.authenticate(created.secret)

    async def test_valid_secret_returns_the_key_and_records_its_use(
        self, service: ApiKeyService, store: InMemoryApiKeyStore, clock: FakeClock
    ) -> None:
        created = await create_provider_key(service, "acme")
        clock.advance(timedelta(minutes=5))

        assert await service.authenticate(created.secret) == created.key

        stored = await store.get(created.key.key_id)
        assert stored is not None and stored.key.last_used_time == clock.now

    async def test_recording_use_cannot_undo_a_concurrent_revoke(
        self, store: InMemoryApiKeyStore, clock: FakeClock
    ) -> None:
        """The revoke lands between the lookup of the key and the write of its last use."""
        revoke_now = asyncio.Event()
        revoked = asyncio.Event()

        class SlowReadStore(InMemoryApiKeyStore):
            async def get(self, key_id: str) -> StoredApiKey | None:
                stored = await super().get(key_id)
                if revoke_now.is_set():
                    revoke_now.clear()
                    await revoked.wait()
                return stored

        slow = SlowReadStore()
        service = ApiKeyService(slow, clock=clock)
        created = await create_provider_key(service, "acme")
        revoke_now.set()
        authenticating = asyncio.ensure_future(service.authenticate(created.secret))
        await asyncio.sleep(0)
        await service.revoke(OPERATOR, key_id=created.key.key_id, reason="leaked")
        revoked.set()
        await authenticating

        with pytest.raises(Unauthenticated):
            await service.authenticate(created.secret)


class TestDevelopmentKeys:
    async def test_only_active_development_keys_are_reported(self, service: ApiKeyService, clock: FakeClock) -> None:
        active = await service.create(OPERATOR, **request(development=True))
        revoked = await service.create(OPERATOR, **request(development=True))
        await service.create(OPERATOR, **request(development=True, ttl=timedelta(hours=1)))
        await service.create(OPERATOR, **request())
        await service.revoke(OPERATOR, key_id=revoked.key.key_id, reason="done")
        clock.advance(timedelta(hours=1))

        assert [k.key_id for k in await service.active_development_keys()] == [active.key.key_id]


class TestCertificateBinding:
    SHA256 = "ab" * 32

    async def test_a_key_carries_the_certificate_it_is_bound_to(self, service: ApiKeyService) -> None:
        colons = ":".join(["AB"] * 32)  # as `openssl x509 -fingerprint -sha256` prints it
        created = await service.create(OPERATOR, **request(client_certificate_sha256=colons))
        assert created.key.client_certificate_sha256 == self.SHA256
        assert created.key.accepts_certificate(self.SHA256)
        assert not created.key.accepts_certificate(None)
        assert not created.key.accepts_certificate("cd" * 32)

    async def test_an_unbound_key_accepts_any_connection(self, service: ApiKeyService) -> None:
        created = await service.create(OPERATOR, **request())
        assert created.key.client_certificate_sha256 is None
        assert created.key.accepts_certificate(None) and created.key.accepts_certificate(self.SHA256)

    async def test_a_malformed_fingerprint_is_refused(self, service: ApiKeyService) -> None:
        with pytest.raises(InvalidArgument) as refused:
            await service.create(OPERATOR, **request(client_certificate_sha256="not-a-hash"))
        assert [v.field for v in refused.value.violations] == ["client_certificate_sha256"]

    async def test_production_refuses_an_unbound_regulator_key(
        self, store: InMemoryApiKeyStore, clock: FakeClock
    ) -> None:
        production = ApiKeyService(store, clock=clock, require_bound_regulator_keys=True)
        regulator = request(role=Role.REGULATOR, tenant_id="", regulator_scope=BEIJING_CYBERSPACE)
        with pytest.raises(InvalidArgument) as refused:
            await production.create(OPERATOR, **regulator)
        assert [v.field for v in refused.value.violations] == ["client_certificate_sha256"]
        bound = await production.create(OPERATOR, **regulator, client_certificate_sha256=self.SHA256)
        assert bound.key.client_certificate_sha256 == self.SHA256
        # Other roles need no binding.
        await production.create(OPERATOR, **request())
