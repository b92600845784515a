"""`avgate feed follow`: the reference client a regulator runs against the feed.

avgate feed follow [--state-file F | --cursor C] [--out FILE] [filters...]
                   [--vkey VKEY ...] [--max-items N] [--exit-when-idle]

Follows avgate.reporting.v1.RegulatorFeedService/Follow through the gateway
with the regulator's key and writes one JSON line per item (incidents as the
proto's JSON mapping; tree heads with their signed note). What it guarantees:

- Resumable: after each item is written and flushed, its cursor is saved
  atomically to --state-file; a restarted client continues exactly after the
  last item saved. A crash between writing a line and saving its cursor can
  repeat that one line on restart — lines carry their cursor, so a consumer
  drops a repeat by cursor.
- Trust: every tree head is checked against the log's signing keys and, once
  a head was seen, proven consistent with the previous one (RFC 9162
  consistency proof) before it is written. The keys are pinned on first use
  (avgate.cli.feed_trust): the first run trusts the keys the log publishes and
  saves them in the state file; later runs trust only those, or the keys
  given with --vkey (which replace the pins). A head that fails either check
  stops the client (exit 1); nothing after it is accepted.
- Holds on: a dropped connection or an unavailable gateway is retried with
  capped backoff from the last saved cursor; a refused call (bad key, bad
  filter) stops with the error as JSON on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import sys
import tempfile
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from avgate.cli.common import add_gateway_tls_arguments, gateway_channel, print_rpc_error
from avgate.cli.feed_filter import incident_filter
from avgate.cli.feed_trust import FeedError, LedgerTrust
from avgate.ledger.remote import check_extends

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}
MAX_BACKOFF_SECONDS = 30.0


class _State:
    """The cursor, the last verified tree head and the pinned ledger keys, saved atomically after every item."""

    def __init__(self, path: pathlib.Path | None, cursor: str):
        self.path = path
        self.cursor = cursor
        self.head_note: bytes | None = None
        self.vkeys: list[str] | None = None
        if path is not None and path.exists():
            saved = json.loads(path.read_text())
            self.cursor = cursor or saved.get("cursor", "")
            note = saved.get("tree_head")
            self.head_note = note.encode() if note else None
            self.vkeys = saved.get("vkeys") or None

    def save(self) -> None:
        if self.path is None:
            return
        document = {
            "cursor": self.cursor,
            "tree_head": self.head_note.decode() if self.head_note else None,
            "vkeys": self.vkeys,
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w") as fh:
            json.dump(document, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


def _request(args: argparse.Namespace, cursor: str) -> Any:
    from avgate.reporting.v1 import reporting_pb2

    request = reporting_pb2.FollowRequest(
        cursor=cursor,
        filter=reporting_pb2.FeedFilter(incidents=incident_filter(args), exclude_tree_heads=args.no_tree_heads),
    )
    request.heartbeat_interval.FromSeconds(args.heartbeat)
    return request


class _Follower:
    def __init__(self, args: argparse.Namespace, out: TextIO):
        self.args = args
        self.out = out
        self.state = _State(pathlib.Path(args.state_file) if args.state_file else None, args.cursor or "")
        self.metadata = (("authorization", f"Bearer {args.api_key}"),)
        self.incidents = 0
        where = str(self.state.path) if self.state.path else "this run (no --state-file)"
        self.trust = LedgerTrust(args.vkey, self.state.vkeys, where)

    async def _open(self, ledger: Any, note: bytes, what: str) -> Any:
        """The checkpoint if a trusted key signed it; the keys are pinned in the state file on first use."""
        from avgate.reporting.v1 import reporting_pb2

        async def published() -> list[str]:
            reply = await ledger.ListSigningKeys(
                reporting_pb2.ListSigningKeysRequest(), metadata=self.metadata, timeout=30
            )
            return [k.verifier_key for k in reply.keys]

        checkpoint = await self.trust.open(note, published, what)
        if self.trust.pinned != self.state.vkeys:
            self.state.vkeys = self.trust.pinned
            self.state.save()
        return checkpoint

    async def _check_head(self, ledger: Any, note: bytes) -> dict[str, Any]:
        """The head's JSON if it verifies and extends the previous one; FeedError otherwise."""
        from avgate.reporting.v1 import reporting_pb2

        checkpoint = await self._open(ledger, note, "a tree head in the feed")
        consistent_with = None
        previous = self.state.head_note
        if previous is not None:
            before = await self._open(ledger, previous, "the last head saved in the state file")
            proof: list[bytes] = []
            if 0 < before.size < checkpoint.size:
                reply = await ledger.GetConsistencyProof(
                    reporting_pb2.GetConsistencyProofRequest(
                        first_tree_size=before.size, second_tree_size=checkpoint.size
                    ),
                    metadata=self.metadata,
                    timeout=30,
                )
                proof = [bytes(h) for h in reply.proof.path]
            result = check_extends(previous, note, proof, self.trust.known)
            if not result.ok:
                raise FeedError(f"the log's new head does not extend the previous one: {result.message()}")
            consistent_with = before.size
        self.state.head_note = note
        return {
            "tree_size": checkpoint.size,
            "root_hash": checkpoint.root_hash.hex(),
            "checkpoint": note.decode(),
            "verified": True,
            "consistent_with_size": consistent_with,
        }

    async def _write(self, line: dict[str, Any], cursor: str) -> None:
        self.out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.out.flush()
        if self.out is not sys.stdout:
            os.fsync(self.out.fileno())
        self.state.cursor = cursor
        self.state.save()

    async def follow_once(self, channel: grpc.aio.Channel) -> bool:
        """Follows until the stream ends; True when the client is done (limits reached)."""
        from avgate.kernel.convert import ProtoEnum
        from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc

        item_kind = ProtoEnum(reporting_pb2.FeedItemKind, "FEED_ITEM_KIND_", str)
        feed = reporting_pb2_grpc.RegulatorFeedServiceStub(channel)
        ledger = reporting_pb2_grpc.AuditLedgerServiceStub(channel)
        call = feed.Follow(_request(self.args, self.state.cursor), metadata=self.metadata)
        try:
            async for response in call:
                if response.HasField("heartbeat"):
                    if self.args.exit_when_idle:
                        return True
                    continue
                item = response.item
                line: dict[str, Any] = {
                    "cursor": item.cursor,
                    "kind": item_kind.name_of(item.kind),
                    "publish_time": item.publish_time.ToJsonString(),
                }
                if item.HasField("tree_head"):
                    line["tree_head"] = await self._check_head(ledger, bytes(item.tree_head.checkpoint))
                else:
                    line["incident"] = json_format.MessageToDict(item.incident)
                    self.incidents += 1
                await self._write(line, item.cursor)
                if self.args.max_items and self.incidents >= self.args.max_items:
                    return True
        finally:
            call.cancel()
        return False


async def _follow(args: argparse.Namespace, out: TextIO) -> int:
    follower = _Follower(args, out)
    backoff = 1.0
    while True:
        try:
            async with gateway_channel(args) as channel:
                if await follower.follow_once(channel):
                    return 0
            backoff = 1.0  # the server ended the stream (a restart): resume at once
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE:
                return print_rpc_error(exc)
            print(
                f"avgate feed follow: {exc.code().name}; resuming from the last cursor in {backoff:.0f} s",
                file=sys.stderr,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


def cmd_follow(args: argparse.Namespace) -> int:
    args.api_key = args.api_key or os.environ.get("AVGATE_API_KEY")
    if not args.api_key:
        raise SystemExit("set --api-key or AVGATE_API_KEY (a regulator's or an operator's key)")
    if args.state_file and args.cursor:
        raise SystemExit("give --cursor or --state-file, not both (the state file holds the cursor)")
    try:
        if args.out:
            with open(args.out, "a", encoding="utf-8") as out:
                return asyncio.run(_follow(args, out))
        return asyncio.run(_follow(args, sys.stdout))
    except FeedError as exc:
        print(f"avgate feed follow: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    feed = sub.add_parser("feed", help="the regulator feed: follow it as a regulator would")
    feed.set_defaults(func=lambda args: feed.print_help() or 2)
    fsub = feed.add_subparsers(dest="feed_command")
    follow = fsub.add_parser("follow", help="follow the feed, one JSON line per item, resumable and verified")
    follow.add_argument("--target", default=os.environ.get("AVGATE_GATEWAY", "127.0.0.1:50051"))
    follow.add_argument("--api-key", help="a regulator's or operator's key (default AVGATE_API_KEY)")
    add_gateway_tls_arguments(follow)
    follow.add_argument("--state-file", help="where the cursor and last verified head are kept (resume from it)")
    follow.add_argument("--cursor", help="start after this cursor (instead of a state file)")
    follow.add_argument("--out", help="append the JSON lines to this file (default: stdout)")
    follow.add_argument("--category", action="append", default=[], help="e.g. rumor (repeatable)")
    follow.add_argument("--department", action="append", default=[], help="e.g. cyberspace (repeatable)")
    follow.add_argument("--region", action="append", default=[], help="6-digit region code (repeatable)")
    follow.add_argument("--tenant", action="append", default=[], help="tenant id (repeatable)")
    follow.add_argument("--since", help="only incidents created at or after this ISO 8601 time")
    follow.add_argument("--until", help="only incidents created before this ISO 8601 time")
    follow.add_argument("--no-tree-heads", action="store_true", help="leave the signed tree heads out")
    follow.add_argument(
        "--vkey",
        action="append",
        default=[],
        help="trust this ledger note verifier key and pin it in the state file in place of the pinned ones "
        "(repeatable; default: the keys pinned on first use)",
    )
    follow.add_argument("--heartbeat", type=int, default=15, help="heartbeat interval when idle, seconds")
    follow.add_argument("--max-items", type=int, default=0, help="stop after this many incidents")
    follow.add_argument("--exit-when-idle", action="store_true", help="stop at the first heartbeat (caught up)")
    follow.set_defaults(func=cmd_follow)

    from avgate.cli import feed_export

    feed_export.add_parsers(fsub)
