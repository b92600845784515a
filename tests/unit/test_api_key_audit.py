"""Every key change is recorded in the audit ledger, and never with personal data."""

from __future__ import annotations

import json

import pytest

from avgate.kernel.errors import InvalidArgument
from avgate.kernel.principal import Principal, Role
from avgate.ledger.entry import canonical_bytes
from gateway.service import ApiKeyService
from gateway.store import InMemoryApiKeyStore

OPERATOR = Principal(role=Role.OPERATOR, subject="ops-1", request_id="req-1")


@pytest.fixture
def store() -> InMemoryApiKeyStore:
    return InMemoryApiKeyStore()


async def _create(service: ApiKeyService) -> str:
    created = await service.create(
        OPERATOR, display_name="uploader", role=Role.PROVIDER, tenant_id="acme", regulator_scope=None, ttl=None
    )
    return created.key.key_id


class TestKeyChangesAreLedgered:
    async def test_create_revoke_and_rotate_each_write_one_entry(self, store: InMemoryApiKeyStore) -> None:
        service = ApiKeyService(store)
        first, second = await _create(service), await _create(service)
        await service.rotate(OPERATOR, key_id=first, grace=None)
        await service.revoke(OPERATOR, key_id=second, reason="contract ended")

        actions = [(e.action, e.subject_id) for e in store.ledger]
        assert actions == [
            ("api_key.create", first),
            ("api_key.create", second),
            ("api_key.rotate", first),
            ("api_key.revoke", second),
        ]
        revoke = json.loads(canonical_bytes(store.ledger[-1]))
        assert revoke["actor"] == {"role": "operator", "subject": "ops-1", "request_id": "req-1"}
        assert revoke["tenant"] == "acme" and revoke["reason"] == "contract ended"

    async def test_the_secret_never_reaches_the_ledger(self, store: InMemoryApiKeyStore) -> None:
        service = ApiKeyService(store)
        created = await service.create(
            OPERATOR, display_name="uploader", role=Role.PROVIDER, tenant_id="acme", regulator_scope=None, ttl=None
        )
        rotated = await service.rotate(OPERATOR, key_id=created.key.key_id, grace=None)
        recorded = b"".join(canonical_bytes(e) for e in store.ledger)
        assert created.secret.encode() not in recorded and rotated.secret.encode() not in recorded

    async def test_reading_and_failed_changes_write_nothing(self, store: InMemoryApiKeyStore) -> None:
        service = ApiKeyService(store)
        key_id = await _create(service)
        await service.list(OPERATOR, tenant_id="", include_revoked=True, page_size=0, page_token="")
        with pytest.raises(InvalidArgument):
            await service.revoke(OPERATOR, key_id=key_id, reason="")
        assert len(store.ledger) == 1

    @pytest.mark.parametrize(
        "reason",
        ["user 13800138000 complained", "holder 11010519491231002X"],
        ids=["mobile-number", "resident-id"],
    )
    async def test_a_reason_with_personal_data_is_refused(self, store: InMemoryApiKeyStore, reason: str) -> None:
        service = ApiKeyService(store)
        key_id = await _create(service)
        with pytest.raises(InvalidArgument) as refused:
            await service.revoke(OPERATOR, key_id=key_id, reason=reason)
        assert [v.field for v in refused.value.violations] == ["reason"]
        assert reason not in refused.value.message
        assert len(store.ledger) == 1
