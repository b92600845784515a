"""The authoritative identity verifier: one interface, an HTTP/JSON adapter for
a national verification service, and (in verifier_standin) a local stand-in
server that speaks the same protocol.

The verifier answers MATCH, MISMATCH or NOT_FOUND. When it cannot answer
(down, timing out, an answer we cannot read, a refusal of our credentials)
the adapter raises DependencyUnavailable, so the caller holds the flow and
retries later: unavailable is never a match.

Protocol (POST, JSON, bearer credentials):
    <url>/v1/individuals:verify     {"name": ..., "id_number": ...}
    <url>/v1/organizations:verify   {"credit_code": ..., "name": ...}
answered 200 with {"result": "match" | "mismatch" | "not_found", "reference": "..."}.
5xx, 408, 425, 429 and connection failures are retried a bounded number
of times. The stand-in marks its answers with the header
`X-Avgate-Stand-In: true`; an adapter built with `refuse_stand_in` (the
production profile) treats such an answer as unavailable.

Neither the name nor the ID number is logged or put in an error message.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Protocol

from avgate.kernel.errors import DependencyUnavailable
from services.identity.http_post import HttpAnswer, HttpUnavailable, JsonPoster

log = logging.getLogger(__name__)

VERIFIER_DEPENDENCY = "identity verifier"
STAND_IN_HEADER = "x-avgate-stand-in"


class VerifierOutcome(enum.StrEnum):
    MATCH = "match"
    MISMATCH = "mismatch"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class VerifierAnswer:
    outcome: VerifierOutcome
    reference: str
    """The verifier's own id of this check (for the record); empty when it gave none."""

    @property
    def matched(self) -> bool:
        return self.outcome is VerifierOutcome.MATCH


class IdentityVerifier(Protocol):
    async def verify_individual(self, *, name: str, id_number: str) -> VerifierAnswer:
        """Name + resident ID number; DependencyUnavailable when there is no answer."""
        ...

    async def verify_organization(self, *, credit_code: str, name: str) -> VerifierAnswer:
        """Unified Social Credit Code + registered name; DependencyUnavailable when there is no answer."""
        ...


class HttpIdentityVerifier:
    """The HTTP/JSON adapter (see module docstring for the protocol)."""

    def __init__(self, poster: JsonPoster, *, refuse_stand_in: bool = False):
        self._poster = poster
        self._refuse_stand_in = refuse_stand_in

    async def verify_individual(self, *, name: str, id_number: str) -> VerifierAnswer:
        return await self._ask("individuals:verify", {"name": name, "id_number": id_number})

    async def verify_organization(self, *, credit_code: str, name: str) -> VerifierAnswer:
        return await self._ask("organizations:verify", {"credit_code": credit_code, "name": name})

    async def _ask(self, method: str, document: dict[str, str]) -> VerifierAnswer:
        try:
            answer = await self._poster.post(f"v1/{method}", document)
        except HttpUnavailable as exc:
            log.warning("identity verifier %s: %s", method, exc)
            raise DependencyUnavailable(VERIFIER_DEPENDENCY, retry_after_seconds=5.0) from None
        return self._read(method, answer)

    def _read(self, method: str, answer: HttpAnswer) -> VerifierAnswer:
        if self._refuse_stand_in and answer.headers.get(STAND_IN_HEADER, "").lower() == "true":
            log.error("identity verifier %s: answered by the local stand-in, refused in production", method)
            raise DependencyUnavailable(VERIFIER_DEPENDENCY, retry_after_seconds=60.0)
        if answer.status != 200:
            # Not retryable (a 4xx): our request or credentials are wrong. An operator must look;
            # the body is not logged (it may echo the request).
            log.error("identity verifier %s refused the request: HTTP %d", method, answer.status)
            raise DependencyUnavailable(VERIFIER_DEPENDENCY, retry_after_seconds=60.0)
        body = answer.json()
        raw = body.get("result") if isinstance(body, dict) else None
        try:
            outcome = VerifierOutcome(str(raw))
        except ValueError:
            log.error("identity verifier %s: unreadable answer", method)
            raise DependencyUnavailable(VERIFIER_DEPENDENCY, retry_after_seconds=5.0) from None
        reference = body.get("reference") if isinstance(body, dict) else None
        return VerifierAnswer(outcome, reference if isinstance(reference, str) else "")
