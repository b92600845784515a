"""Handing incidents to reporting through the sending service's own outbox.

identity, screening and complaints raise incidents (a prohibited upload, an
account closed under Art. 14, an upheld complaint) that must reach
reporting even while reporting is down. The sending service calls
`report_incident` in the same transaction as the change that raised the
incident: it writes one event for "reporting:incidents" to the service's
own outbox. The service's dispatcher (`IncidentHandoff`) hands the event to
`ReportingDelivery`, which calls reporting's IncidentService.CreateIncident
with a token the service signs naming itself, the original principal nested
inside, so reporting records the incident under the origin's tenant.

CreateIncident is idempotent by (tenant, external id): a redelivered event
(a crash between delivery and recording) returns the incident recorded
first, so the caller must set `external_id` and `report_incident` refuses
an incident without one. Identical enqueues share one event id and so one
outbox row; an incident re-sent under the same external id with other
content is a separate event that reporting refuses as an idempotency
conflict, which dead-letters it where an operator sees it.

The event's payload is JSON: the serialized CreateIncidentRequest (base64),
the origin principal's claims without the end user's client address (the
incident needs the tenant and the caller, not a network address), the
request id and the W3C trace context of the call that raised it, so
reporting's span joins the original trace across the outbox hop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, replace
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry
from pydantic import Field

from avgate.kernel.db import libpq_url
from avgate.kernel.errors import FieldViolation, InvalidArgument, InvalidPrincipalToken
from avgate.kernel.keys import SigningKey, load_private_key
from avgate.kernel.outbox import (
    ClaimedEvent,
    Dispatcher,
    OutboxEvent,
    OutboxMetrics,
    PermanentDeliveryError,
    Receipt,
    RetryableDeliveryError,
    enqueue,
)
from avgate.kernel.principal import TOKEN_METADATA_KEY, Principal, TokenSigner
from avgate.kernel.settings import ProcessSettings
from avgate.kernel.telemetry import outgoing_trace_metadata
from avgate.kernel.tls import channel_credentials, process_identity, secure_or_plain
from avgate.reporting.v1 import reporting_pb2

log = logging.getLogger(__name__)

DESTINATION = "reporting:incidents"
REPORTING = "reporting"  # the audience of the tokens: reporting's process name
CREATE_INCIDENT = "/avgate.reporting.v1.IncidentService/CreateIncident"
PAYLOAD_VERSION = 1
MAX_EXTERNAL_ID = 128  # reporting's limit (IncidentInput.external_id)

# Event ids of identical handoffs: uuid5 under this namespace.
_EVENT_NAMESPACE = uuid.UUID("5d0b8a52-3c0e-4a57-9a4e-2f61c1a9e7b4")

# Outcomes of CreateIncident. Retryable: reporting (or the way to it) may take the same bytes
# later. Permanent: it refused them, and will again until someone fixes the incident, the
# keys or reporting's rules and replays the dead letter. Any other code is retried too (an
# UNIMPLEMENTED reporting mid-rollout, a CANCELLED call), bounded by max_attempts.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
    }
)
PERMANENT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,  # an idempotency conflict: this external id holds other content
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)

CHANNEL_OPTIONS = [
    # Reconnect soon after reporting comes back: the default backoff grows to 120 s, and a
    # fail-fast call on a channel waiting out its backoff fails without trying.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


# --------------------------------------------------------------------------- settings


class ReportingHandoffSettings(ProcessSettings):
    """What a service that hands incidents to reporting adds to its settings (under its own prefix)."""

    reporting_target: str = "127.0.0.1:50063"
    """reporting's gRPC address (host:port), where this service's outbox dispatcher sends incidents."""
    reporting_timeout_seconds: float = Field(default=10.0, gt=0)
    """Deadline of one incident handoff call to reporting, in seconds."""
    dispatcher_enabled: bool = True
    """Run the dispatcher of this service's outbox (incidents for reporting) in this process;
    it needs the service's database URL."""
    # Patient by default: with the 300 s cap and full jitter, 100 attempts ride out about
    # four hours of reporting being down before an event needs an operator's replay.
    dispatcher_max_attempts: int = Field(default=100, ge=1)
    """Delivery attempts of one outbox event before it becomes a dead letter (`avgate outbox replay` retries it)."""
    dispatcher_base_delay: float = Field(default=0.5, gt=0)
    """The first retry's backoff, in seconds; it doubles per attempt, with full jitter."""
    dispatcher_max_delay: float = Field(default=300.0, gt=0)
    """The cap on the retry backoff, in seconds."""


# --------------------------------------------------------------------------- the event


@dataclass(frozen=True)
class Handoff:
    """A decoded handoff event: what to send to reporting, and for whom."""

    request: bytes  # a serialized CreateIncidentRequest
    origin: Principal
    trace: tuple[tuple[str, str], ...] = ()


def _without_client_address(principal: Principal) -> Principal:
    origin = _without_client_address(principal.origin) if principal.origin is not None else None
    return replace(principal, client_address=None, origin=origin)


def incident_event(incident: reporting_pb2.IncidentInput, *, origin: Principal) -> OutboxEvent:
    """The outbox event that hands `incident` to reporting for `origin`; InvalidArgument without an external id."""
    external_id = incident.external_id
    if not external_id or len(external_id) > MAX_EXTERNAL_ID or not external_id.isprintable():
        raise InvalidArgument(
            FieldViolation(
                "incident.external_id",
                f"must be 1 to {MAX_EXTERNAL_ID} printable characters: retries are idempotent by it",
            )
        )
    request = reporting_pb2.CreateIncidentRequest(incident=incident).SerializeToString(deterministic=True)
    trimmed = _without_client_address(origin)
    document = {
        "version": PAYLOAD_VERSION,
        "request": base64.b64encode(request).decode("ascii"),
        "origin": trimmed.to_claims(),
        "request_id": origin.request_id,
        "trace": dict(outgoing_trace_metadata()),
    }
    payload = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    # Same tenant, same request: same event, so an enqueue repeated by the caller's retry is one row.
    tenant = origin.effective.tenant_id or ""
    event_id = uuid.uuid5(_EVENT_NAMESPACE, f"{tenant}\n{hashlib.sha256(request).hexdigest()}")
    return OutboxEvent(DESTINATION, payload, event_id)


async def report_incident(
    conn: Any, incident: reporting_pb2.IncidentInput, *, schema: str, origin: Principal
) -> uuid.UUID:
    """Queues `incident` for reporting in the caller's open transaction on `conn`; returns the event id.

    `schema` is the calling service's own (its `outbox` table); `origin` is the
    principal the service acts for, normally `current_principal()`. Refuses
    (InvalidArgument, nothing written) an incident without an external id.
    """
    event = incident_event(incident, origin=origin)
    await enqueue(conn, event, schema=schema)
    return event.event_id


def decode_handoff(payload: bytes) -> Handoff:
    """The handoff an event carries; ValueError when it is not one this build reads."""
    try:
        document = json.loads(payload)
    except ValueError as exc:  # not UTF-8, not JSON
        raise ValueError("malformed incident handoff: not JSON") from exc
    if not isinstance(document, dict) or document.get("version") != PAYLOAD_VERSION:
        raise ValueError(f"malformed incident handoff: not a version {PAYLOAD_VERSION} handoff")
    try:
        request = base64.b64decode(document["request"], validate=True)
        origin = Principal.from_claims(document["origin"], request_id=str(document.get("request_id") or ""))
        trace = tuple((str(k), str(v)) for k, v in dict(document.get("trace") or {}).items())
    except InvalidPrincipalToken as exc:
        raise ValueError(f"malformed incident handoff: {exc}") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # ValueError: base64
        raise ValueError(f"malformed incident handoff: {type(exc).__name__} {exc}") from exc
    return Handoff(request, origin, trace)


# --------------------------------------------------------------------------- the delivery


def _describe(error: grpc.aio.AioRpcError) -> str:
    """The code, reporting's message and the field violations it named: what an operator needs to fix it."""
    text = f"reporting answered {error.code().name}: {error.details()}"
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                text += "".join(f"; {v.field}: {v.description}" for v in bad.field_violations)
    return text


class ReportingDelivery:
    """Calls reporting's CreateIncident for each handoff event, signed as this service.

    One channel for the dispatcher's lifetime, created on first use inside the
    running loop (an aio channel is bound to the loop it was made in) and
    closed by `close`. Tokens are signed per attempt, so a retry hours later
    still carries a fresh one. With `credentials` (this process's mTLS inside),
    reporting must present a certificate naming avgate-reporting.
    """

    def __init__(
        self,
        target: str,
        signer: TokenSigner,
        *,
        timeout: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
    ):
        self._target = target
        self._signer = signer
        self._timeout = timeout
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._create: grpc.aio.UnaryUnaryMultiCallable | None = None

    def _call(self) -> grpc.aio.UnaryUnaryMultiCallable:
        if self._create is None:
            self._channel = secure_or_plain(
                self._target, self._credentials, server_name=process_identity(REPORTING), options=CHANNEL_OPTIONS
            )
            # The request travels as the bytes queued with the change: no parse, no re-serialisation.
            self._create = self._channel.unary_unary(
                CREATE_INCIDENT,
                request_serializer=None,
                response_deserializer=reporting_pb2.CreateIncidentResponse.FromString,
            )
        return self._create

    async def deliver(self, event: ClaimedEvent) -> Receipt:
        try:
            handoff = decode_handoff(event.payload)
        except ValueError as exc:
            raise PermanentDeliveryError(str(exc)) from exc
        token = self._signer.sign_as_service(handoff.origin, audience=REPORTING, method=CREATE_INCIDENT)
        metadata: list[tuple[str, str]] = [(TOKEN_METADATA_KEY, token), *handoff.trace]
        if handoff.origin.request_id:
            metadata.append(("x-request-id", handoff.origin.request_id))
        try:
            response = await self._call()(handoff.request, metadata=metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in PERMANENT_CODES:
                raise PermanentDeliveryError(_describe(exc)) from exc
            raise RetryableDeliveryError(_describe(exc)) from exc
        return Receipt({"incident_id": response.incident.incident_id, "created": response.created})

    async def close(self) -> None:
        channel, self._channel, self._create = self._channel, None, None
        if channel is not None:
            await channel.close()


# --------------------------------------------------------------------------- the dispatcher


@dataclass
class IncidentHandoff:
    """A service's outbox dispatcher with its delivery to reporting: a background job of the process."""

    dispatcher: Dispatcher
    delivery: ReportingDelivery

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.dispatcher.run(stop)
        finally:
            await self.delivery.close()


def service_signer(settings: ProcessSettings) -> TokenSigner:
    """This process's token signer: its own key, its own name as the issuer."""
    key = SigningKey(settings.process_name, load_private_key(settings.own_signing_key_file))
    return TokenSigner(key, settings.token_ttl_seconds)


def incident_handoff(
    settings: ReportingHandoffSettings, schema: str, registry: CollectorRegistry
) -> IncidentHandoff | None:
    """The dispatcher of `schema`.outbox delivering to reporting, or None when disabled.

    ValueError when the process has no database URL; OSError or ValueError
    when its signing key cannot be read.
    """
    if not settings.dispatcher_enabled:
        return None
    url = settings.effective_database_url
    if not url:
        prefix = settings.model_config.get("env_prefix", "")
        raise ValueError(
            f"set {prefix}DATABASE_URL or DATABASE_URL (the outbox of incidents for reporting lives in the "
            f"{schema} schema), or {prefix}DISPATCHER_ENABLED=false"
        )
    delivery = ReportingDelivery(
        settings.reporting_target,
        service_signer(settings),
        timeout=settings.reporting_timeout_seconds,
        credentials=channel_credentials(settings),
    )
    dispatcher = Dispatcher(
        libpq_url(url),
        schema,
        {DESTINATION: delivery},
        max_attempts=settings.dispatcher_max_attempts,
        base_delay=settings.dispatcher_base_delay,
        max_delay=settings.dispatcher_max_delay,
        metrics=OutboxMetrics(registry),
    )
    return IncidentHandoff(dispatcher, delivery)
