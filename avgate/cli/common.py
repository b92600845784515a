"""What the `avgate` subcommands share: printing results and gRPC errors."""

from __future__ import annotations

import json
import sys

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2  # noqa: F401 - registers detail types for printing
from grpc_status import rpc_status


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def print_rpc_error(exc: grpc.aio.AioRpcError) -> int:
    """Prints a gRPC error with its google.rpc details as JSON on stderr; returns exit code 1."""
    error: dict[str, object] = {"code": exc.code().name, "message": exc.details()}
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    if status is not None:
        error["details"] = [json_format.MessageToDict(d) for d in status.details]
    print(json.dumps({"error": error}, indent=2, ensure_ascii=False), file=sys.stderr)
    return 1
