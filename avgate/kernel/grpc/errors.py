"""The one error-mapping interceptor: domain error → gRPC status + google.rpc details.

Every domain error carries an ErrorInfo (domain "avgate", a stable reason)
and the details its kind calls for: BadRequest field violations for bad
input, ResourceInfo for missing or duplicate resources, RetryInfo for rate
limits and unavailable dependencies. Anything unexpected becomes INTERNAL
with the trace id; the stack trace goes to the log, never to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace

from avgate.kernel import errors
from avgate.kernel.grpc.auth import metadata_value
from avgate.kernel.grpc.wrapping import ScopedInterceptor
from avgate.kernel.principal import accepted_request_id, bound_principal

log = logging.getLogger(__name__)

ERROR_DOMAIN = "avgate"

_CODES: list[tuple[type[errors.DomainError], int]] = [
    (errors.InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (errors.Unauthenticated, code_pb2.UNAUTHENTICATED),
    (errors.PermissionDenied, code_pb2.PERMISSION_DENIED),
    (errors.NotFound, code_pb2.NOT_FOUND),
    (errors.AlreadyExists, code_pb2.ALREADY_EXISTS),
    (errors.FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (errors.ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
    (errors.DependencyUnavailable, code_pb2.UNAVAILABLE),
]


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _retry_delay(seconds: float) -> duration_pb2.Duration:
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(max(0, round(seconds * 1000)))
    return delay


def status_for(error: errors.DomainError, request_id: str | None = None) -> status_pb2.Status:
    """The google.rpc.Status a domain error maps to.

    request_id defaults to the bound principal's; the interceptor passes the
    one the call carried, since the principal is unbound by the time an
    error reaches it.
    """
    code = next((c for cls, c in _CODES if isinstance(error, cls)), code_pb2.FAILED_PRECONDITION)
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata))]
    if isinstance(error, errors.InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description, reason=v.reason
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    if isinstance(error, (errors.NotFound, errors.AlreadyExists)):
        details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=error.resource_type, resource_name=error.resource_name, description=error.message
                )
            )
        )
    if isinstance(error, (errors.ResourceExhausted, errors.DependencyUnavailable)):
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=_retry_delay(error.retry_after_seconds))))
    principal = bound_principal()
    request_id = request_id or (principal.request_id if principal is not None else None)
    if request_id:
        details.append(_pack(error_details_pb2.RequestInfo(request_id=request_id)))
    return status_pb2.Status(code=code, message=error.message, details=details)


def internal_status(trace_id: str) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(
        reason="ERROR_REASON_INTERNAL", domain=ERROR_DOMAIN, metadata={"trace_id": trace_id} if trace_id else {}
    )
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error; trace id {trace_id}" if trace_id else "internal error",
        details=[_pack(info)],
    )


async def abort_with(context: grpc.aio.ServicerContext, status: status_pb2.Status) -> None:
    rich = rpc_status.to_status(status)
    await context.abort(rich.code, rich.details, trailing_metadata=rich.trailing_metadata)


class ErrorMappingInterceptor(ScopedInterceptor):
    """Maps what a handler raises to the status the caller sees."""

    @asynccontextmanager
    async def scope(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        try:
            yield
        except grpc.aio.AbortError:
            raise
        except errors.DomainError as exc:
            request_id = accepted_request_id(metadata_value(context.invocation_metadata(), "x-request-id"))
            await abort_with(context, status_for(exc, request_id))
        except NotImplementedError:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet")
        except Exception:
            span = trace.get_current_span().get_span_context()
            trace_id = format(span.trace_id, "032x") if span.is_valid else ""
            log.exception("unexpected error in %s", method)
            await abort_with(context, internal_status(trace_id))
