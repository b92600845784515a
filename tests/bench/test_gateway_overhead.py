"""Benchmark: what the gateway's front door adds to a call, side by side (issue 11).

The whole stack runs as processes (`avgate run`) in production's shape: TLS
on the gateway's public listener, mTLS inside, the authorisation table and
the rate limits on (out of reach, so every call pays for the check and none
is refused). Two paths:

- direct: to the service's own port over the stack's mTLS, with a principal
  token signed per call with the gateway's key (what the gateway sends);
- gateway: over TLS to the gateway with the development provider key (key
  lookup with its cache, authorisation, limits, guards, token signing, relay).

Calls:

- unary: IdentityService/CheckEligibility for a user of the provider's
  tenant, which identity answers from its database (a successful call);
  throughput with THROUGHPUT_IN_FLIGHT calls in flight, latency (p50) at a
  moderate load of MODERATE_IN_FLIGHT in flight;
- upload: EvidenceService/AttachEvidence, metadata then UPLOAD_CHUNKS chunks
  of 256 KiB (fresh random bytes per upload, so nothing is deduplicated).

Requests and payloads are built before the timer; the two paths alternate in
order over ROUNDS rounds after a warm-up; a ratio is the median of the
rounds'. Each is measured twice: the gateway alone on one core and
everything else on the other (how the goal is judged), then every process on
both cores. The test asserts that every call succeeded. Run with `make
bench`; record the printed figures in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from avgate.bench.verdict import Verdict
from avgate.common.v1 import common_pb2
from avgate.identity.v1 import identity_pb2, identity_pb2_grpc
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.principal import TOKEN_METADATA_KEY, Principal, Role, TokenSigner
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.bench.harness import (
    OutsideTls,
    Sample,
    Series,
    alternating,
    can_split,
    closed_loop,
    gateway_channel,
    median_ratio,
    placement,
)
from tests.support import RunningStack
from tests.support.stack import aio_service_channel

pytestmark = pytest.mark.bench

CALLS = 1500
THROUGHPUT_IN_FLIGHT = 16
MODERATE_IN_FLIGHT = 4
ROUNDS = 5
UPLOADS = 40
UPLOAD_CHUNKS = 4
CHUNK = 256 * 1024
UPLOAD_IN_FLIGHT = 4
THROUGHPUT_GOAL = 0.8
ADDED_P50_GOAL_MS = 1.0
TENANT = "dev-tenant"  # the development provider key's
CHECK = "/avgate.identity.v1.IdentityService/CheckEligibility"
ATTACH = "/avgate.reporting.v1.EvidenceService/AttachEvidence"
CREATE_INCIDENT = "/avgate.reporting.v1.IncidentService/CreateIncident"


class Paths:
    """The direct and the gateway channel with their stubs and metadata, opened once."""

    def __init__(self, stack: RunningStack, tls: OutsideTls):
        self.signer = TokenSigner(SigningKey("gateway", load_private_key(stack.state_dir / "keys" / "gateway.key")))
        self.principal = Principal(role=Role.PROVIDER, subject="bench", tenant_id=TENANT, request_id="bench")
        self.key_metadata = (("authorization", f"Bearer {stack.description['development_api_keys']['provider']}"),)
        self.channels = {
            "identity": aio_service_channel(stack, "identity"),
            "reporting": aio_service_channel(stack, "reporting"),
            "gateway": gateway_channel(stack, tls),
        }

    def token(self, audience: str, method: str) -> tuple[tuple[str, str], ...]:
        return ((TOKEN_METADATA_KEY, self.signer.sign(self.principal, audience=audience, method=method)),)

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


def unary_paths(paths: Paths, in_flight: int) -> dict[str, Callable[[], Awaitable[Sample]]]:
    request = identity_pb2.CheckEligibilityRequest(
        user=common_pb2.UserRef(tenant_id=TENANT, user_id="bench-user"), action=identity_pb2.ACCOUNT_FUNCTION_PUBLISH
    )
    direct = identity_pb2_grpc.IdentityServiceStub(paths.channels["identity"])
    through = identity_pb2_grpc.IdentityServiceStub(paths.channels["gateway"])

    async def direct_call() -> None:
        # The direct path signs per call too: a token is accepted once, and the gateway signs per call.
        await direct.CheckEligibility(request, metadata=paths.token("identity", CHECK), timeout=10)

    async def gateway_call() -> None:
        await through.CheckEligibility(request, metadata=paths.key_metadata, timeout=10)

    return {
        "direct": lambda: closed_loop(direct_call, CALLS, in_flight),
        "gateway": lambda: closed_loop(gateway_call, CALLS, in_flight),
    }


async def new_incident(paths: Paths) -> str:
    item = reporting_pb2.IncidentInput(
        external_id=uuid.uuid4().hex,
        source=reporting_pb2.INCIDENT_SOURCE_SCREENING,
        category=reporting_pb2.INCIDENT_CATEGORY_RUMOR,
        legal_basis=[common_pb2.LegalBasis(instrument="NAVIS-2019", article="13")],
        facts="A refuted rumour was reposted; transmission stopped.",
        region_code="110105",
    )
    reply = await reporting_pb2_grpc.IncidentServiceStub(paths.channels["gateway"]).CreateIncident(
        reporting_pb2.CreateIncidentRequest(incident=item), metadata=paths.key_metadata, timeout=10
    )
    return str(reply.incident.incident_id)


def upload_messages(incident_id: str) -> list[reporting_pb2.AttachEvidenceRequest]:
    data = os.urandom(UPLOAD_CHUNKS * CHUNK)
    metadata = reporting_pb2.EvidenceUploadMetadata(
        request_id=uuid.uuid4().hex,
        incident_id=incident_id,
        media_type="video/mp4",
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        file_name="clip.mp4",
    )
    return [
        reporting_pb2.AttachEvidenceRequest(metadata=metadata),
        *(reporting_pb2.AttachEvidenceRequest(chunk=data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)),
    ]


def upload_paths(paths: Paths, incident_id: str) -> dict[str, Callable[[], Awaitable[Sample]]]:
    direct = reporting_pb2_grpc.EvidenceServiceStub(paths.channels["reporting"])
    through = reporting_pb2_grpc.EvidenceServiceStub(paths.channels["gateway"])

    async def stream(messages: list[reporting_pb2.AttachEvidenceRequest]) -> AsyncIterator[object]:
        for message in messages:
            yield message

    def run(attach: Callable[[list[reporting_pb2.AttachEvidenceRequest]], Awaitable[object]]) -> Awaitable[Sample]:
        prepared = [upload_messages(incident_id) for _ in range(UPLOADS)]  # outside the timer

        async def one() -> None:
            await attach(prepared.pop())

        return closed_loop(one, UPLOADS, UPLOAD_IN_FLIGHT)

    async def direct_attach(messages: list[reporting_pb2.AttachEvidenceRequest]) -> object:
        return await direct.AttachEvidence(stream(messages), metadata=paths.token("reporting", ATTACH), timeout=60)

    async def gateway_attach(messages: list[reporting_pb2.AttachEvidenceRequest]) -> object:
        return await through.AttachEvidence(stream(messages), metadata=paths.key_metadata, timeout=60)

    return {"direct": lambda: run(direct_attach), "gateway": lambda: run(gateway_attach)}


def report(title: str, series: dict[str, Series], unit: str) -> float:
    ratio = median_ratio(series["gateway"], series["direct"])
    rounds = ", ".join(
        f"{g.rate / d.rate:.2f}" for g, d in zip(series["gateway"].rounds, series["direct"].rounds, strict=True)
    )
    print(f"\n{title}")
    for name, s in series.items():
        print(
            f"  {name:<8} {s.rate:8.1f} {unit}/s  p50 {s.percentile_ms(0.5):7.2f} ms"
            f"  p99 {s.percentile_ms(0.99):7.2f} ms"
        )
    print(f"  gateway/direct: median {ratio:.3f} (rounds: {rounds})")
    return ratio


PLACEMENTS = {
    "split": "gateway on its own core",
    "shared": "all processes on both cores",
}


def where(split: str) -> str:
    if split == "split" and not can_split():
        pytest.skip("fewer than two cores: the gateway cannot have one of its own")
    return PLACEMENTS[split]


@pytest.mark.parametrize("split", list(PLACEMENTS))
async def test_unary_call_through_the_gateway(running: RunningStack, tls_outside: OutsideTls, split: str) -> None:
    label = where(split)
    paths = Paths(running, tls_outside)
    try:
        with placement(running, split == "split"):
            throughput = await alternating(unary_paths(paths, THROUGHPUT_IN_FLIGHT), ROUNDS)
            moderate = await alternating(unary_paths(paths, MODERATE_IN_FLIGHT), ROUNDS)
    finally:
        await paths.close()
    ratio = report(
        f"CheckEligibility (successful), {CALLS} calls x {ROUNDS} rounds, {THROUGHPUT_IN_FLIGHT} in flight, {label}",
        throughput,
        "calls",
    )
    report(f"same, {MODERATE_IN_FLIGHT} in flight (moderate load), {label}", moderate, "calls")
    added = moderate["gateway"].percentile_ms(0.5) - moderate["direct"].percentile_ms(0.5)
    print(f"  added p50: {added:.2f} ms\n")
    print(
        Verdict(
            f"gateway / direct throughput, successful unary call, {label}",
            f"≥ {THROUGHPUT_GOAL}x",
            f"{ratio:.2f}x",
            ratio >= THROUGHPUT_GOAL,
        ).line()
    )
    print(
        Verdict(
            f"gateway added p50, successful unary call, {MODERATE_IN_FLIGHT} in flight, {label}",
            f"≤ {ADDED_P50_GOAL_MS} ms",
            f"{added:.2f} ms",
            added <= ADDED_P50_GOAL_MS,
        ).line()
    )


@pytest.mark.parametrize("split", list(PLACEMENTS))
async def test_upload_through_the_gateway(running: RunningStack, tls_outside: OutsideTls, split: str) -> None:
    label = where(split)
    paths = Paths(running, tls_outside)
    try:
        incident_id = await new_incident(paths)
        with placement(running, split == "split"):
            uploads = await alternating(upload_paths(paths, incident_id), ROUNDS)
    finally:
        await paths.close()
    ratio = report(
        f"AttachEvidence, {UPLOAD_CHUNKS} x 256 KiB, {UPLOADS} uploads x {ROUNDS} rounds, "
        f"{UPLOAD_IN_FLIGHT} in flight, {label}",
        uploads,
        "uploads",
    )
    print()
    print(
        Verdict(
            f"gateway / direct throughput, AttachEvidence upload, {label}", "none set (tracked)", f"{ratio:.2f}x", None
        ).line()
    )
