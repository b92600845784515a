"""`avgate`: the operator's command line.

avgate run                      the whole local stack (embedded defaults)
avgate db bootstrap|migrate|check
avgate keys create|list|revoke|rotate|limit|tenant-limit   (through the gateway's RPCs)
avgate outbox replay --service S        (dead letters back to pending, in the ledger)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import duration_pb2, json_format
from google.rpc import error_details_pb2  # noqa: F401 - registers detail types for printing

from avgate.cli.common import add_gateway_tls_arguments, gateway_channel, print_json, print_rpc_error
from avgate.kernel import migrations
from avgate.kernel.db import SCHEMA_OWNERS, bootstrap_database, role_url
from avgate.kernel.principal import DEPARTMENTS, RegulatorScope, Role

KEY_ROLES = tuple(role.value for role in Role if role is not Role.SERVICE)
"""The roles an API key can have (service principals are minted by the services, not keyed)."""


def _service_urls(args: argparse.Namespace) -> dict[str, str]:
    admin = args.admin_url or os.environ.get("DATABASE_URL")
    urls = {}
    for owner in SCHEMA_OWNERS:
        url = os.environ.get(owner.url_env) or (role_url(admin, owner.role) if admin else None)
        if url is None:
            raise SystemExit(f"set {owner.url_env} or DATABASE_URL")
        urls[owner.name] = url
    return urls


def cmd_db(args: argparse.Namespace) -> int:
    if args.db_command == "bootstrap":
        admin = args.admin_url or os.environ.get("DATABASE_URL")
        if not admin:
            raise SystemExit("set --admin-url or DATABASE_URL")
        bootstrap_database(admin)
        print("roles and schemas are in place")
        return 0
    urls = _service_urls(args)
    failed = 0
    for owner in SCHEMA_OWNERS:
        if args.service and owner.name != args.service:
            continue
        if args.db_command == "migrate":
            migrations.upgrade(owner, urls[owner.name])
            print(f"{owner.name}: at head")
        else:
            try:
                migrations.check(owner, urls[owner.name])
                print(f"{owner.name}: models and migrations agree")
            except Exception as exc:  # noqa: BLE001 - alembic reports drift as an exception
                print(f"{owner.name}: {exc}", file=sys.stderr)
                failed = 1
    return failed


def _rate_limit(args: argparse.Namespace, gateway_pb2: Any) -> Any:
    """The RateLimit message of --rps/--burst; None for --default (or, when optional, for neither)."""
    if getattr(args, "default", False):
        if args.rps is not None or args.burst is not None:
            raise SystemExit("give --rps and --burst, or --default, not both")
        return None
    if args.rps is None and args.burst is None:
        return None
    if args.rps is None or args.burst is None:
        raise SystemExit("give both --rps and --burst")
    return gateway_pb2.RateLimit(requests_per_second=args.rps, burst=args.burst)


async def _call_gateway(args: argparse.Namespace) -> dict[str, object]:
    from avgate.gateway.v1 import gateway_pb2, gateway_pb2_grpc
    from avgate.kernel.convert import role_to_proto, scope_to_proto
    from avgate.kernel.tls import fingerprint_of_file

    key = args.api_key or os.environ.get("AVGATE_API_KEY")
    if not key:
        raise SystemExit("set --api-key or AVGATE_API_KEY (an operator or provider key)")
    metadata = (("authorization", f"Bearer {key}"),)
    async with gateway_channel(args) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        if args.keys_command == "create":
            scope = None
            if args.department or args.region:
                scope = RegulatorScope(departments=tuple(args.department), region_codes=tuple(args.region))
            request = gateway_pb2.CreateApiKeyRequest(
                display_name=args.name,
                role=role_to_proto(Role(args.role)),  # type: ignore[arg-type]
                tenant_id=args.tenant or "",
                regulator_scope=scope_to_proto(scope),
                rate_limit=_rate_limit(args, gateway_pb2),
            )
            if args.bind_cert:
                request.client_certificate_sha256 = fingerprint_of_file(args.bind_cert)
            if args.ttl_days:
                request.ttl.CopyFrom(duration_pb2.Duration(seconds=int(args.ttl_days * 86400)))
            reply = await stub.CreateApiKey(request, metadata=metadata, timeout=10)
        elif args.keys_command == "list":
            reply = await stub.ListApiKeys(
                gateway_pb2.ListApiKeysRequest(tenant_id=args.tenant or "", include_revoked=args.include_revoked),
                metadata=metadata,
                timeout=10,
            )
        elif args.keys_command == "revoke":
            reply = await stub.RevokeApiKey(
                gateway_pb2.RevokeApiKeyRequest(key_id=args.key_id, reason=args.reason), metadata=metadata, timeout=10
            )
        elif args.keys_command == "limit":
            if not args.default and args.rps is None and args.burst is None:
                raise SystemExit("give --rps and --burst, or --default")
            reply = await stub.SetApiKeyRateLimit(
                gateway_pb2.SetApiKeyRateLimitRequest(key_id=args.key_id, rate_limit=_rate_limit(args, gateway_pb2)),
                metadata=metadata,
                timeout=10,
            )
        elif args.keys_command == "tenant-limit":
            if not args.default and args.rps is None and args.burst is None:
                reply = await stub.GetTenantRateLimit(
                    gateway_pb2.GetTenantRateLimitRequest(tenant_id=args.tenant_id), metadata=metadata, timeout=10
                )
            else:
                reply = await stub.SetTenantRateLimit(
                    gateway_pb2.SetTenantRateLimitRequest(
                        tenant_id=args.tenant_id, rate_limit=_rate_limit(args, gateway_pb2)
                    ),
                    metadata=metadata,
                    timeout=10,
                )
        else:
            rotate = gateway_pb2.RotateApiKeyRequest(key_id=args.key_id)
            if args.grace_hours is not None:
                rotate.grace_period.CopyFrom(duration_pb2.Duration(seconds=int(args.grace_hours * 3600)))
            reply = await stub.RotateApiKey(rotate, metadata=metadata, timeout=10)
    return json_format.MessageToDict(reply)


def cmd_keys(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_call_gateway(args))
    except grpc.aio.AioRpcError as exc:
        return print_rpc_error(exc)
    print_json(result)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from avgate.cli.stack import StackConfig, run_stack

    return run_stack(
        StackConfig(
            state_dir=pathlib.Path(args.state_dir),
            host=args.host,
            gateway_port=args.gateway_port,
            service_port_base=args.service_port_base,
            metrics_port_base=args.metrics_port_base,
            health_port_base=args.health_port_base,
            gateway_mtls_port=args.gateway_mtls_port,
            verifier_standin_port=args.verifier_standin_port,
            internal_tls=not args.plaintext_inside,
        )
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avgate", description="avgate compliance gateway")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole local stack until Ctrl-C")
    run.add_argument("--state-dir", default=os.environ.get("AVGATE_STATE_DIR", ".avgate"))
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--gateway-port", type=int, default=50051)
    run.add_argument("--service-port-base", type=int, default=50061, help="identity, screening, reporting, complaints")
    run.add_argument("--metrics-port-base", type=int, default=9460)
    run.add_argument(
        "--health-port-base", type=int, default=50070, help="plaintext health only, per process (gateway first)"
    )
    run.add_argument(
        "--gateway-mtls-port", type=int, default=50052, help="the gateway's listener requiring client certificates"
    )
    run.add_argument(
        "--plaintext-inside", action="store_true", help="no mTLS between the processes (default: a generated CA)"
    )
    run.add_argument(
        "--verifier-standin-port", type=int, default=0, help="the identity verification stand-in (0: any free port)"
    )
    run.set_defaults(func=cmd_run)

    db = sub.add_parser("db", help="database roles, schemas and migrations")
    db.add_argument("db_command", choices=["bootstrap", "migrate", "check"])
    db.add_argument("--admin-url", help="admin URL (default DATABASE_URL)")
    db.add_argument("--service", choices=[o.name for o in SCHEMA_OWNERS])
    db.set_defaults(func=cmd_db)

    keys = sub.add_parser("keys", help="API keys, through the gateway")
    keys.add_argument("--target", default=os.environ.get("AVGATE_GATEWAY", "127.0.0.1:50051"))
    keys.add_argument("--api-key", help="caller's key (default AVGATE_API_KEY)")
    add_gateway_tls_arguments(keys)
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=KEY_ROLES)
    create.add_argument("--tenant")
    create.add_argument("--department", action="append", default=[], choices=DEPARTMENTS)
    create.add_argument("--region", action="append", default=[])
    create.add_argument("--ttl-days", type=float)
    create.add_argument("--rps", type=float, help="the key's own rate limit, requests/s (operators; with --burst)")
    create.add_argument("--burst", type=int, help="the key's own burst (operators; with --rps)")
    create.add_argument(
        "--bind-cert",
        metavar="FILE",
        help="bind the key to this client certificate (PEM): accepted only on the mTLS listener with it",
    )
    lst = ksub.add_parser("list")
    lst.add_argument("--tenant")
    lst.add_argument("--include-revoked", action="store_true")
    revoke = ksub.add_parser("revoke")
    revoke.add_argument("key_id")
    revoke.add_argument("--reason", required=True)
    rotate = ksub.add_parser("rotate")
    rotate.add_argument("key_id")
    rotate.add_argument("--grace-hours", type=float)
    limit = ksub.add_parser("limit", help="set a key's rate limit, or --default to use the gateway's (operators)")
    limit.add_argument("key_id")
    tenant_limit = ksub.add_parser(
        "tenant-limit", help="show a tenant's rate limit; with --rps/--burst or --default, set it (operators)"
    )
    tenant_limit.add_argument("tenant_id")
    for command in (limit, tenant_limit):
        command.add_argument("--rps", type=float, help="requests per second, sustained")
        command.add_argument("--burst", type=int, help="requests accepted at once after a pause")
        command.add_argument("--default", action="store_true", help="back to the gateway's default limit")
    keys.set_defaults(func=cmd_keys)

    from avgate.cli import bench, feed, ledger, outbox

    ledger.add_parser(sub)
    feed.add_parser(sub)
    outbox.add_parser(sub)
    bench.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
