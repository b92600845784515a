"""What delivery states make of an incident's status, and how an attempt's
outcome reads as a google.rpc code."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.rpc import code_pb2

from services.reporting.deliveries.domain import Attempt, AttemptResult, incident_status_after
from services.reporting.deliveries.server import attempt_result
from services.reporting.incidents.domain import IncidentStatus

R, D, F, A = (
    IncidentStatus.RECORDED,
    IncidentStatus.DELIVERED,
    IncidentStatus.DELIVERY_FAILED,
    IncidentStatus.ACKNOWLEDGED,
)


class TestIncidentStatusAfterDeliveries:
    @pytest.mark.parametrize(
        ("current", "states", "expected"),
        [
            (R, {"pending": 2}, R),
            (R, {"pending": 1, "delivered": 1}, R),
            (R, {"delivered": 2}, D),
            (R, {"delivered": 1, "dead": 1}, F),
            (R, {"pending": 1, "dead": 1}, F),
            (F, {"pending": 1, "delivered": 1}, R),
            (F, {"delivered": 2}, D),
            (D, {"delivered": 2}, D),
            (A, {"dead": 1, "delivered": 1}, A),
            (A, {"delivered": 2}, A),
            (R, {}, R),
            (R, {"delivered": 2, "pending": 0}, D),
        ],
        ids=[
            "all-waiting",
            "one-waiting",
            "all-delivered",
            "one-dead",
            "dead-while-another-waits",
            "replayed",
            "failed-then-delivered",
            "unchanged",
            "acknowledged-stays-despite-dead",
            "acknowledged-stays",
            "no-deliveries",
            "zero-counts-ignored",
        ],
    )
    def test_status(self, current: IncidentStatus, states: dict[str, int], expected: IncidentStatus) -> None:
        assert incident_status_after(current, states) is expected


def _attempt(outcome: AttemptResult, http_status: int | None = None, *, refused: bool = False) -> Attempt:
    return Attempt(1, datetime.now(UTC), 0.01, outcome, refused, http_status, "the endpoint's message")


class TestAttemptResult:
    @pytest.mark.parametrize(
        ("attempt", "code"),
        [
            (_attempt(AttemptResult.DELIVERED, 200), code_pb2.OK),
            (_attempt(AttemptResult.DELIVERED), code_pb2.OK),
            (_attempt(AttemptResult.RETRY, 503), code_pb2.UNAVAILABLE),
            (_attempt(AttemptResult.RETRY, 500), code_pb2.INTERNAL),
            (_attempt(AttemptResult.RETRY, 429), code_pb2.RESOURCE_EXHAUSTED),
            (_attempt(AttemptResult.RETRY, 408), code_pb2.DEADLINE_EXCEEDED),
            (_attempt(AttemptResult.RETRY), code_pb2.UNAVAILABLE),
            (_attempt(AttemptResult.DEAD, 400, refused=True), code_pb2.INVALID_ARGUMENT),
            (_attempt(AttemptResult.DEAD, 401, refused=True), code_pb2.UNAUTHENTICATED),
            (_attempt(AttemptResult.DEAD, 403, refused=True), code_pb2.PERMISSION_DENIED),
            (_attempt(AttemptResult.DEAD, 404, refused=True), code_pb2.NOT_FOUND),
            (_attempt(AttemptResult.DEAD, 301, refused=True), code_pb2.FAILED_PRECONDITION),
            (_attempt(AttemptResult.DEAD, refused=True), code_pb2.FAILED_PRECONDITION),
            (_attempt(AttemptResult.DEAD, 503), code_pb2.UNAVAILABLE),
        ],
        ids=[
            "delivered",
            "delivered-file",
            "503",
            "500",
            "429",
            "408",
            "no-answer",
            "400",
            "401",
            "403",
            "404",
            "redirect",
            "refused-without-http",
            "exhausted",
        ],
    )
    def test_code(self, attempt: Attempt, code: int) -> None:
        result = attempt_result(attempt)
        assert result.code == code
        assert result.message == ("" if code == code_pb2.OK else "the endpoint's message")
