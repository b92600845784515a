"""Fixtures more than one integration module uses: the reporting server with its regulator
feed (`feed`), a fresh tenant id (`tenant`), and the verifier stand-in serving the shipped
identities plus an organisation (`standin`).

A module that defines a fixture of the same name uses its own: test_identity_sms_verifier's
`standin` (the shipped data only, per test) and the modules with their own `tenant` keep them.
"""

from __future__ import annotations

import json
import pathlib
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from avgate.kernel.grpc.server import GrpcProcess
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.principal import TokenSigner
from avgate.ledger.checkpoint import NoteSigner, NoteVerifier
from avgate.reporting.v1 import reporting_pb2_grpc
from services.identity.verifier_standin import DEFAULT_DATA, VerifierStandIn, load_data
from services.reporting.__main__ import compose
from services.reporting.config import ReportingSettings
from tests.conftest import Database
from tests.support.http import serving
from tests.support.identity import ORG
from tests.support.reporting import ORIGIN, Feed


@pytest.fixture(scope="module")
async def feed(
    database: Database, keys_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Feed]:
    ledger_key = tmp_path_factory.mktemp("ledger") / "ledger.skey"
    signer = NoteSigner.generate(ORIGIN)
    ledger_key.write_text(signer.skey() + "\n")
    settings = ReportingSettings(
        trusted_keys_dir=keys_dir,  # type: ignore[call-arg]
        generate_keys=False,  # type: ignore[call-arg]
        metrics_port=-1,
        grpc_port=0,
        database_url=database.url_for("reporting"),
        sequencer_enabled=True,
        ledger_origin=ORIGIN,
        ledger_signing_key_file=ledger_key,
        dispatcher_enabled=False,
        state_dir=tmp_path_factory.mktemp("state"),  # type: ignore[call-arg]
    )
    process: GrpcProcess = await compose(settings)
    await process.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{process.port}")
    token_signer = TokenSigner(SigningKey("gateway", load_private_key(keys_dir / "gateway.key")))
    try:
        yield Feed(
            reporting_pb2_grpc.IncidentServiceStub(channel),
            reporting_pb2_grpc.RegulatorFeedServiceStub(channel),
            reporting_pb2_grpc.EvidenceServiceStub(channel),
            token_signer,
            database,
            NoteVerifier.from_vkey(signer.vkey()),
            settings,
            reporting_pb2_grpc.AuditLedgerServiceStub(channel),
        )
    finally:
        await channel.close()
        await process.stop()


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VerifierStandIn]:
    # The shipped data plus an organisation whose code passes GB 32100 and GB 11714.
    data = tmp_path_factory.mktemp("standin") / "identities.jsonl"
    org = {"kind": "organization", "name": ORG["organization_name"], "credit_code": ORG["unified_social_credit_code"]}
    data.write_text(DEFAULT_DATA.read_text(encoding="utf-8") + json.dumps(org, ensure_ascii=False) + "\n")
    yield from serving(VerifierStandIn(("127.0.0.1", 0), load_data(data), bearer_token="cr3d"))
