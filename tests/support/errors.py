"""Reading an RPC error's google.rpc details: what tests assert on besides the status code."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def details(error: grpc.aio.AioRpcError, message_type: type) -> list[Any]:
    """The details of `message_type` an RPC error carries."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error carries google.rpc details"
    return unpack(status.details, message_type)


def unpack(packed: Any, message_type: type) -> list[Any]:
    """The `message_type` messages among packed google.protobuf.Any details (a google.rpc.Status's)."""
    found = []
    for detail in packed:
        if detail.Is(message_type.DESCRIPTOR):
            message = message_type()
            detail.Unpack(message)
            found.append(message)
    return found


def violated_fields(error: grpc.aio.AioRpcError) -> set[str]:
    """The fields an INVALID_ARGUMENT names in its BadRequest."""
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error
    (bad,) = details(error, error_details_pb2.BadRequest)
    return {v.field for v in bad.field_violations}
