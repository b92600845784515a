"""What the `avgate` subcommands share: printing results and gRPC errors, and the
channel to the gateway (plaintext, TLS, or TLS with a client certificate)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2  # noqa: F401 - registers detail types for printing
from grpc_status import rpc_status

from avgate.kernel.tls import client_credentials, secure_or_plain

GATEWAY_TLS_OPTIONS = (
    ("--tls-ca", "AVGATE_TLS_CA", "the CA of the gateway's certificate (PEM); set: TLS (default AVGATE_TLS_CA)"),
    (
        "--client-cert",
        "AVGATE_CLIENT_CERT",
        "a client certificate (PEM) for the gateway's mTLS listener, as bound keys need (default AVGATE_CLIENT_CERT)",
    ),
    ("--client-key", "AVGATE_CLIENT_KEY", "the client certificate's private key (PEM) (default AVGATE_CLIENT_KEY)"),
)


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


def add_gateway_tls_arguments(parser: argparse.ArgumentParser, *, repeated: bool = False) -> None:
    """--tls-ca, --client-cert and --client-key; `repeated`: a subcommand's copy, which overrides the parent's
    only when given."""
    for flag, env, help_text in GATEWAY_TLS_OPTIONS:
        parser.add_argument(flag, default=argparse.SUPPRESS if repeated else os.environ.get(env), help=help_text)


def gateway_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    """A channel to `args.target`: TLS when --tls-ca or a client certificate is given, plaintext otherwise."""
    try:
        credentials = client_credentials(
            getattr(args, "tls_ca", None), getattr(args, "client_cert", None), getattr(args, "client_key", None)
        )
    except (OSError, ValueError) as exc:
        raise SystemExit(f"TLS: {exc}") from exc
    return secure_or_plain(args.target, credentials)
