"""`avgate outbox ...`: the operator's way back from the dead-letter state.

avgate outbox replay --service S [--event-id ID ...] [--database-url URL] [--reason TEXT]

Moves dead outbox events (all, or the ones named) back to pending so the
service's dispatcher delivers them again, and records the replay in the
audit ledger in the same transaction: either both happen or neither. For
reporting the same transaction counts the replays and sets incidents that
had failed delivery back to RECORDED (as DeliveryService's replay does).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg

from avgate.cli.common import print_json
from avgate.kernel.db import libpq_url, owner
from avgate.kernel.outbox import replay_dead
from avgate.kernel.principal import Principal, Role
from avgate.ledger.append import append
from avgate.ledger.entry import LedgerEntry

# Services that own an outbox table in their schema (reporting's goes to the authorities,
# the others' hand incidents to reporting).
OUTBOX_SERVICES = ("identity", "screening", "reporting", "complaints")
MAX_IDS_IN_ENTRY = 500
CLI_ACTOR = Principal(role=Role.OPERATOR, subject="avgate-cli")


async def _reporting_replayed(conn: Any, event_ids: Sequence[uuid.UUID], reason: str) -> None:
    from services.reporting.deliveries.store import apply_replays

    await apply_replays(conn, event_ids, actor=CLI_ACTOR, reason=reason)


# What a replay means to a service beyond its outbox rows (replay counts, the state of what
# was being delivered), written in the replay's transaction.
AFTER_REPLAY: dict[str, Callable[[Any, Sequence[uuid.UUID], str], Awaitable[None]]] = {
    "reporting": _reporting_replayed,
}


async def replay(
    url: str, service: str, event_ids: Sequence[uuid.UUID] | None = None, *, reason: str = ""
) -> list[uuid.UUID]:
    """Replays `service`'s dead events (all, or `event_ids`) and records it in the ledger; one commit."""
    if service not in OUTBOX_SERVICES:
        raise ValueError(f"{service!r} has no outbox (one of {', '.join(OUTBOX_SERVICES)})")
    schema = owner(service).schema
    async with await psycopg.AsyncConnection.connect(libpq_url(url)) as conn, conn.transaction():
        replayed = await replay_dead(conn, schema, event_ids=list(event_ids) if event_ids else None)
        if replayed and service in AFTER_REPLAY:
            await AFTER_REPLAY[service](conn, replayed, reason)
        if replayed:
            await append(
                conn,
                LedgerEntry(
                    action="outbox.replay",
                    subject_type="outbox",
                    subject_id=schema,
                    actor=CLI_ACTOR,
                    reason=reason,
                    data={
                        "service": service,
                        "requested": [str(e) for e in event_ids][:MAX_IDS_IN_ENTRY] if event_ids else "all",
                        "replayed_count": len(replayed),
                        # Bounded so the entry stays within the ledger's size limit.
                        "replayed": sorted(str(e) for e in replayed)[:MAX_IDS_IN_ENTRY],
                    },
                ),
            )
    return replayed


def cmd_replay(args: argparse.Namespace) -> int:
    env = owner(args.service).url_env
    url = args.database_url or os.environ.get(env) or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit(f"set --database-url, {env} or DATABASE_URL")
    try:
        event_ids = [uuid.UUID(e) for e in args.event_id]
    except ValueError as exc:
        print(f"avgate outbox: not an event id: {exc}", file=sys.stderr)
        return 2
    replayed = asyncio.run(replay(url, args.service, event_ids or None, reason=args.reason))
    print_json({"service": args.service, "replayed": [str(e) for e in replayed]})
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    outbox = sub.add_parser("outbox", help="a service's outbox: replay dead letters")
    outbox.set_defaults(func=lambda args: outbox.print_help() or 2)
    osub = outbox.add_subparsers(dest="outbox_command")
    replay_cmd = osub.add_parser("replay", help="move dead events back to pending, recorded in the ledger")
    replay_cmd.add_argument("--service", required=True, choices=list(OUTBOX_SERVICES))
    replay_cmd.add_argument(
        "--event-id", action="append", default=[], metavar="ID", help="replay only this event (repeatable)"
    )
    replay_cmd.add_argument("--database-url", help="the service's URL (default <SERVICE>_DATABASE_URL or DATABASE_URL)")
    replay_cmd.add_argument("--reason", default="", help="why, for the ledger")
    replay_cmd.set_defaults(func=cmd_replay)
