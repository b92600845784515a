"""`avgate run` delivers reports to the authorities: an incident created
through the gateway lands, signed by reporting's key, in the local file drop."""

from __future__ import annotations

import json
import time
import uuid

import grpc
import pytest

from avgate.common.v1 import common_pb2
from avgate.kernel.deliveries import verify_document
from avgate.kernel.keys import load_trusted_keys
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.support import RunningStack

pytestmark = pytest.mark.e2e


def test_an_incident_reaches_the_cyberspace_drop_signed(running: RunningStack) -> None:
    key = running.description["development_api_keys"]["provider"]
    item = reporting_pb2.IncidentInput(
        external_id=f"e2e-{uuid.uuid4().hex[:8]}",
        source=reporting_pb2.INCIDENT_SOURCE_SCREENING,
        category=reporting_pb2.INCIDENT_CATEGORY_RUMOR,
        legal_basis=[common_pb2.LegalBasis(instrument="NAVIS-2019", article="13")],
        facts="A refuted claim was spread in a live stream; transmission stopped.",
        content=[common_pb2.ContentRef(content_id="v-e2e", sha256="cd" * 32)],
        action=common_pb2.ActionTaken(type=common_pb2.ACTION_TYPE_TRANSMISSION_STOPPED),
        region_code="110105",
    )
    with grpc.insecure_channel(running.gateway) as channel:
        created = reporting_pb2_grpc.IncidentServiceStub(channel).CreateIncident(
            reporting_pb2.CreateIncidentRequest(incident=item),
            metadata=(("authorization", f"Bearer {key}"),),
            timeout=10,
        )
    incident_id = created.incident.incident_id

    drops = running.state_dir / "authority-drops" / "cyberspace"
    deadline = time.monotonic() + 10
    found: list[dict] = []  # type: ignore[type-arg]
    while not found:
        assert time.monotonic() < deadline, f"no report for {incident_id} in {drops}"
        time.sleep(0.2)
        for path in drops.glob("*.jsonl"):
            for line in path.read_text().splitlines():
                try:
                    document = json.loads(line)
                except ValueError:
                    continue  # a line still being written
                if document["payload_encoding"] == "json" and document["payload"]["incident_id"] == incident_id:
                    found.append(document)

    [document] = found
    trusted = load_trusted_keys(running.state_dir / "keys")["reporting"]
    payload = verify_document(document, trusted)
    assert json.loads(payload)["incident_id"] == incident_id
    assert document["destination"] == "authority:cyberspace"
