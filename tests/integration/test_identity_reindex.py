"""Rotating the blind-index key: claims are written under every key in the file, and the
re-index job moves older flows to the current key, so one identity still backs at most one
account after the old key is retired."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

import grpc
import pytest

from avgate.identity.v1 import identity_pb2_grpc
from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.keyring import new_key_line
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.principal import TokenSigner
from services.identity.__main__ import compose
from services.identity.config import IdentitySettings
from services.identity.reindex import IndexRotation
from services.identity.verifier_standin import VerifierStandIn
from tests.conftest import Database
from tests.support import FakeClock
from tests.support.identity import ADULT, START, Env, V, provider, verify


@pytest.fixture
def running(
    database: Database, keys_dir: pathlib.Path, standin: VerifierStandIn, tmp_path: pathlib.Path
) -> Callable[[pathlib.Path], object]:
    """An identity process on `index_keys`, its re-index job returned alongside (not running)."""
    (tmp_path / "verifier.token").write_text("cr3d")

    @asynccontextmanager
    async def start(index_keys: pathlib.Path, clock: FakeClock) -> AsyncIterator[tuple[Env, IndexRotation]]:
        settings = IdentitySettings(
            trusted_keys_dir=keys_dir,  # type: ignore[call-arg]
            generate_keys=False,  # type: ignore[call-arg]
            metrics_port=-1,
            grpc_port=0,
            database_url=database.url_for("identity"),
            dispatcher_enabled=False,
            expiry_enabled=False,
            reindex_interval_seconds=3600,  # the test runs the job itself
            blind_index_key_file=index_keys,
            sms_sink_file=tmp_path / "sms.jsonl",
            verifier_url=f"http://127.0.0.1:{standin.server_address[1]}/",
            verifier_credentials_file=tmp_path / "verifier.token",
            verifier_max_attempts=1,
        )
        process: GrpcProcess = await compose(settings, clock=clock)
        await process.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{process.port}")
        signer = TokenSigner(SigningKey("gateway", load_private_key(keys_dir / "gateway.key")))
        env = Env(
            identity_pb2_grpc.IdentityServiceStub(channel),
            signer,
            database,
            clock,
            tmp_path / "sms.jsonl",
            standin,
            settings,
            [],
        )
        rotation = next(job.__self__ for job in process.background if isinstance(job.__self__, IndexRotation))  # type: ignore[attr-defined]
        try:
            yield env, rotation
        finally:
            await channel.close()
            await process.stop()

    return start


async def one_identity_per_account(env: Env, tenant: str) -> None:
    await env.call(
        "UpdateEligibilityPolicy",
        V.UpdateEligibilityPolicyRequest(
            policy=V.EligibilityPolicy(tenant_id=tenant, one_identity_per_account=True),
            update_mask={"paths": ["one_identity_per_account"]},
        ),
        provider(tenant),
    )


@pytest.mark.parametrize("reindexed", [True, False], ids=["reindexed", "not-reindexed"])
async def test_an_identity_stays_claimed_across_a_key_rotation_once_reindexed(
    running: Callable[..., object], tmp_path: pathlib.Path, reindexed: bool
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    index_keys = tmp_path / "index.keys"
    old_key, new_key = new_key_line("old"), new_key_line("new")
    index_keys.write_text(old_key + "\n")
    clock = FakeClock(START)

    async with running(index_keys, clock) as (env, _):  # type: ignore[attr-defined]
        await one_identity_per_account(env, tenant)
        first = await verify(env, tenant, ADULT, "u-1")
        assert first.flow.state == V.VERIFICATION_FLOW_STATE_COMPLETED

    # Rotate: a new current key; the old one stays while the job runs.
    index_keys.write_text(old_key + "\n" + new_key + "\n")
    async with running(index_keys, clock) as (env, rotation):  # type: ignore[attr-defined]
        if reindexed:
            assert await rotation.run_once() >= 1
            assert await rotation.run_once() == 0  # nothing left under the old key
            flows = await env.sql("select index_version from identity.verification_flows where tenant_id = %s", tenant)
            assert {f["index_version"] for f in flows} == {"new"}
            moves = await env.sql(
                "select convert_from(payload, 'UTF8')::jsonb as doc from ledger.queue "
                "where convert_from(payload, 'UTF8')::jsonb ->> 'action' = 'identity.reindex'"
            )
            assert moves and all(m["doc"]["subject"]["id"] == "new" for m in moves)

    # Retire the old key.
    index_keys.write_text(new_key + "\n")
    clock.now += timedelta(hours=2)
    async with running(index_keys, clock) as (env, rotation):  # type: ignore[attr-defined]
        if reindexed:
            assert await rotation.run_once() == 0  # nothing to move; drops claims under keys no longer in the file
        second = await verify(env, tenant, ADULT, "u-2")
        claims = await env.sql(
            "select version, user_id from identity.identity_claims where tenant_id = %s order by user_id", tenant
        )
    if reindexed:
        assert second.flow.failure_reason == V.VERIFICATION_FAILURE_REASON_IDENTITY_IN_USE
        assert claims == [{"version": "new", "user_id": "u-1"}]
    else:
        # Without the re-index the first account's claim exists only under the retired key,
        # which nothing computes any more: the same identity backs a second account.
        assert second.flow.state == V.VERIFICATION_FLOW_STATE_COMPLETED
        assert claims == [{"version": "old", "user_id": "u-1"}, {"version": "new", "user_id": "u-2"}]
