"""Domain errors shared by every service.

Domain code raises these; it never imports grpc. The one error-mapping
interceptor (avgate.kernel.grpc.errors) turns each into a gRPC status with
google.rpc details. `reason` values are the names of
avgate.common.v1.ErrorReason and are stable: clients branch on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from avgate.kernel.personal_data import contains_personal_data

PERSONAL_DATA = "must not hold an ID or mobile number in clear; reference or mask it"
"""The description of the personal-data rule, the same for every field that has it."""


@dataclass(frozen=True)
class FieldViolation:
    """One broken rule of one request field (google.rpc.BadRequest)."""

    field: str
    description: str
    reason: str = ""


class DomainError(Exception):
    """Base of every error a use case may raise on purpose."""

    reason: str = "ERROR_REASON_UNSPECIFIED"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(DomainError):
    """The request broke one or more field rules; nothing was changed."""

    reason = "ERROR_REASON_INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation] | FieldViolation, message: str | None = None):
        self.violations = [violations] if isinstance(violations, FieldViolation) else list(violations)
        if not self.violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(message or f"invalid request: {summary}")


@dataclass
class FieldChecker:
    """Collects field violations so a request reports every broken rule at once."""

    violations: list[FieldViolation] = field(default_factory=list)

    def add(self, field_path: str, description: str, reason: str = "") -> None:
        self.violations.append(FieldViolation(field_path, description, reason))

    def require(self, ok: bool, field_path: str, description: str, reason: str = "") -> None:
        if not ok:
            self.add(field_path, description, reason)

    def text(self, value: str, field_path: str, *, max_length: int, required: bool = True) -> None:
        """Free text: 1..max_length characters (or empty when not required), no personal data in clear.

        Free text reaches ledger entries and the authorities' reports, so an ID
        or mobile number must be referenced or masked before it is sent.
        """
        if required and not value.strip():
            self.add(field_path, f"must be 1 to {max_length} characters")
        elif len(value) > max_length:
            self.add(field_path, f"must be at most {max_length} characters")
        elif contains_personal_data(value):
            self.add(field_path, PERSONAL_DATA)

    def identifier(self, value: str, field_path: str, *, max_length: int = 256) -> None:
        """A caller's id: 1..max_length printable characters, never personal data in clear."""
        if not value or len(value) > max_length or not value.isprintable():
            self.add(field_path, f"must be 1 to {max_length} printable characters")
        elif contains_personal_data(value):
            self.add(field_path, PERSONAL_DATA)

    def raise_if_any(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations)


class Unauthenticated(DomainError):
    """No credential, or an unknown, revoked or expired one."""

    reason = "ERROR_REASON_UNAUTHENTICATED"


class InvalidPrincipalToken(Unauthenticated):
    """The gateway-signed principal token is missing, forged, stale, replayed
    or addressed to another service or method."""

    reason = "ERROR_REASON_INVALID_PRINCIPAL_TOKEN"


class PermissionDenied(DomainError):
    """The caller's role or tenant may not do this."""

    reason = "ERROR_REASON_PERMISSION_DENIED"


class NotFound(DomainError):
    """A resource does not exist or is not visible to the caller."""

    reason = "ERROR_REASON_NOT_FOUND"

    def __init__(self, resource_type: str, resource_name: str, message: str | None = None):
        self.resource_type = resource_type
        self.resource_name = resource_name
        super().__init__(message or f"{resource_type} {resource_name!r} not found")


class AlreadyExists(DomainError):
    """A resource with this identity exists already."""

    reason = "ERROR_REASON_ALREADY_EXISTS"

    def __init__(self, resource_type: str, resource_name: str, message: str | None = None):
        self.resource_type = resource_type
        self.resource_name = resource_name
        super().__init__(message or f"{resource_type} {resource_name!r} already exists")


class IdempotencyConflict(AlreadyExists):
    """The same idempotency key came with a different request."""

    reason = "ERROR_REASON_IDEMPOTENCY_CONFLICT"


class FailedPrecondition(DomainError):
    """The resource is not in a state that allows the operation."""

    reason = "ERROR_REASON_FAILED_PRECONDITION"


class ResourceExhausted(DomainError):
    """A rate limit or lockout applies; the caller may retry after a delay."""

    reason = "ERROR_REASON_RATE_LIMITED"

    def __init__(self, message: str, *, retry_after_seconds: float, reason: str | None = None):
        self.retry_after_seconds = retry_after_seconds
        super().__init__(message, reason=reason)


class DependencyUnavailable(DomainError):
    """A dependency is down; nothing was applied; retry later (fail closed)."""

    reason = "ERROR_REASON_DEPENDENCY_UNAVAILABLE"

    def __init__(self, dependency: str, *, retry_after_seconds: float = 1.0, message: str | None = None):
        self.dependency = dependency
        self.retry_after_seconds = retry_after_seconds
        super().__init__(message or f"{dependency} is unavailable; retry later", metadata={"dependency": dependency})
