"""`avgate ledger ...`: tree heads, proofs, offline checks, verification, pruning.

avgate ledger head [--size N] [--json]
avgate ledger prove-inclusion (--index I | --entry-id ID) [--size N] [--json]
avgate ledger prove-consistency --first M [--second N] [--json]
avgate ledger check-remote --saved FILE [--vkey VKEY ...] [--json]
avgate ledger verify [--database-url URL] [--vkey VKEY ...] [--saved FILE ...] [--json]

Heads and proofs come from the gateway (AuditLedgerService; any role's key will
do). Every head is checked locally against the log's signing keys — the ones
given with --vkey, else the ones the log publishes — and every proof against
its signed head before anything is printed. Hashes are hex, times RFC 3339.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import psycopg
from google.rpc import error_details_pb2  # noqa: F401 - registers detail types for printing

from avgate.cli.common import add_gateway_tls_arguments, gateway_channel, print_json, print_rpc_error
from avgate.kernel.keyring import create_secret_file
from avgate.ledger.checkpoint import Checkpoint, NoteError, NoteVerifier, open_checkpoint, parse_unverified
from avgate.ledger.merkle import ProofError, verify_consistency, verify_inclusion
from avgate.ledger.remote import check_extends, rfc3339_ms

RPC_TIMEOUT_SECONDS = 30


class CommandError(Exception):
    """A failure the command reports on stderr with exit status 1."""


# --------------------------------------------------------------------------- helpers


def _run(args: argparse.Namespace, body: Callable[[Any, argparse.Namespace], Awaitable[int]]) -> int:
    """Calls the ledger service through the gateway and maps failures to exit status 1."""
    from avgate.reporting.v1 import reporting_pb2_grpc

    key = args.api_key or os.environ.get("AVGATE_API_KEY")
    if not key:
        raise SystemExit("set --api-key or AVGATE_API_KEY (a key of any role)")

    async def call() -> int:
        async with gateway_channel(args) as channel:
            stub = _Stub(reporting_pb2_grpc.AuditLedgerServiceStub(channel), key)
            return await body(stub, args)

    try:
        return asyncio.run(call())
    except grpc.aio.AioRpcError as exc:
        return print_rpc_error(exc)
    except CommandError as exc:
        print(f"avgate ledger: {exc}", file=sys.stderr)
        return 1


class _Stub:
    """The AuditLedgerService stub with the caller's key and a timeout on every call."""

    def __init__(self, stub: Any, key: str) -> None:
        self._stub = stub
        self._metadata = (("authorization", f"Bearer {key}"),)

    def __getattr__(self, name: str) -> Callable[[Any], Awaitable[Any]]:
        method = getattr(self._stub, name)

        async def call(request: Any) -> Any:
            return await method(request, metadata=self._metadata, timeout=RPC_TIMEOUT_SECONDS)

        return call


def _pinned(vkeys: list[str]) -> list[NoteVerifier] | None:
    if not vkeys:
        return None
    try:
        return [NoteVerifier.from_vkey(v) for v in vkeys]
    except NoteError as exc:
        raise CommandError(f"--vkey: {exc}") from exc


async def _verifiers(stub: _Stub, args: argparse.Namespace) -> list[NoteVerifier]:
    """The trusted keys: --vkey values if given (only those), else the keys the log publishes."""
    pinned = _pinned(getattr(args, "vkey", []))
    if pinned is not None:
        return pinned
    from avgate.reporting.v1 import reporting_pb2

    reply = await stub.ListSigningKeys(reporting_pb2.ListSigningKeysRequest())
    try:
        return [NoteVerifier.from_vkey(k.verifier_key) for k in reply.keys]
    except NoteError as exc:
        raise CommandError(f"the log publishes a malformed signing key: {exc}") from exc


def _open(note: bytes, verifiers: list[NoteVerifier], what: str) -> Checkpoint:
    try:
        return open_checkpoint(note, verifiers)
    except NoteError as exc:
        raise CommandError(f"{what} does not verify: {exc}") from exc


def _note_text(note: bytes) -> str:
    return note.decode("utf-8")


def _head_json(cp: Checkpoint, note: bytes) -> dict[str, Any]:
    return {
        "origin": cp.origin,
        "tree_size": cp.size,
        "root_hash": cp.root_hash.hex(),
        "timestamp": rfc3339_ms(cp.timestamp_ms),
        "checkpoint": _note_text(note),
    }


async def _head(stub: _Stub, size: int | None) -> bytes:
    from avgate.reporting.v1 import reporting_pb2

    if size:
        reply = await stub.GetTreeHead(reporting_pb2.GetTreeHeadRequest(tree_size=size))
    else:
        reply = await stub.GetLatestTreeHead(reporting_pb2.GetLatestTreeHeadRequest())
    return bytes(reply.tree_head.checkpoint)


# -------------------------------------------------------------------------- commands


async def _cmd_head(stub: _Stub, args: argparse.Namespace) -> int:
    note = await _head(stub, args.size)
    cp = _open(note, await _verifiers(stub, args), "the signed tree head")
    if args.size and cp.size != args.size:
        raise CommandError(f"asked for the head at size {args.size}, got one at size {cp.size}")
    if args.json:
        print_json(_head_json(cp, note))
    else:
        sys.stdout.write(_note_text(note))
    return 0


async def _cmd_prove_inclusion(stub: _Stub, args: argparse.Namespace) -> int:
    from avgate.reporting.v1 import reporting_pb2

    request = reporting_pb2.GetInclusionProofRequest(tree_size=args.size or 0)
    if args.entry_id is not None:
        request.entry_id = args.entry_id
    else:
        request.leaf_index = args.index
    reply = await stub.GetInclusionProof(request)
    note = bytes(reply.tree_head.checkpoint)
    cp = _open(note, await _verifiers(stub, args), "the signed tree head of the proof")
    proof = reply.proof
    leaf_hash = bytes(reply.leaf_hash)
    path = [bytes(h) for h in proof.audit_path]
    if proof.tree_size != cp.size:
        raise CommandError(f"the proof is for tree size {proof.tree_size} but its signed head is at size {cp.size}")
    if args.size and cp.size != args.size:
        raise CommandError(f"asked for a proof against size {args.size}, got one against size {cp.size}")
    if args.entry_id is None and proof.leaf_index != args.index:
        raise CommandError(f"asked for leaf {args.index}, got a proof for leaf {proof.leaf_index}")
    try:
        verify_inclusion(leaf_hash, proof.leaf_index, proof.tree_size, path, cp.root_hash)
    except ProofError as exc:
        raise CommandError(
            f"the inclusion proof of leaf {proof.leaf_index} in the tree of size {cp.size} does NOT verify: {exc}"
        ) from exc
    if args.json:
        result: dict[str, Any] = {
            "leaf_index": proof.leaf_index,
            "tree_size": proof.tree_size,
            "leaf_hash": leaf_hash.hex(),
            "audit_path": [h.hex() for h in path],
            "root_hash": cp.root_hash.hex(),
            "checkpoint": _note_text(note),
        }
        if args.entry_id is not None:
            result["entry_id"] = args.entry_id
        print_json(result)
    else:
        print(
            f"leaf {proof.leaf_index} (hash {leaf_hash.hex()}) is included in the signed tree of size {cp.size}"
            f" (root {cp.root_hash.hex()}): proof verified"
        )
    return 0


async def _cmd_prove_consistency(stub: _Stub, args: argparse.Namespace) -> int:
    from avgate.reporting.v1 import reporting_pb2

    if args.first < 1:
        raise CommandError("--first must be at least 1")
    if args.second and args.second < args.first:
        raise CommandError(f"--second {args.second} is smaller than --first {args.first}")
    reply = await stub.GetConsistencyProof(
        reporting_pb2.GetConsistencyProofRequest(first_tree_size=args.first, second_tree_size=args.second or 0)
    )
    verifiers = await _verifiers(stub, args)
    second_note = bytes(reply.tree_head.checkpoint)
    second = _open(second_note, verifiers, "the signed tree head at the second size")
    first_note = await _head(stub, args.first)
    first = _open(first_note, verifiers, "the signed tree head at the first size")
    proof = reply.proof
    path = [bytes(h) for h in proof.path]
    if (proof.first_tree_size, proof.second_tree_size) != (first.size, second.size):
        raise CommandError(
            f"the proof is between sizes {proof.first_tree_size} and {proof.second_tree_size},"
            f" the signed heads are at sizes {first.size} and {second.size}"
        )
    if args.second and second.size != args.second:
        raise CommandError(f"asked for a proof to size {args.second}, got one to size {second.size}")
    if first.origin != second.origin:
        raise CommandError(f"the heads are for different logs: {first.origin!r} and {second.origin!r}")
    try:
        verify_consistency(first.size, second.size, path, first.root_hash, second.root_hash)
    except ProofError as exc:
        raise CommandError(
            f"the consistency proof between sizes {first.size} and {second.size} does NOT verify: {exc}"
        ) from exc
    if args.json:
        print_json(
            {
                "first_tree_size": first.size,
                "second_tree_size": second.size,
                "path": [h.hex() for h in path],
                "first_root_hash": first.root_hash.hex(),
                "second_root_hash": second.root_hash.hex(),
                "checkpoint": _note_text(second_note),
                "first_checkpoint": _note_text(first_note),
            }
        )
    else:
        print(f"the signed tree of size {second.size} extends the signed tree of size {first.size}: proof verified")
    return 0


async def _cmd_check_remote(stub: _Stub, args: argparse.Namespace) -> int:
    from avgate.reporting.v1 import reporting_pb2

    saved_note: bytes = args.saved_note
    pinned = args.vkey != []
    verifiers = await _verifiers(stub, args)
    latest_note = await _head(stub, None)
    proof: list[bytes] = []
    try:
        saved_size: int | None = parse_unverified(saved_note).size
    except NoteError:
        saved_size = None  # check_extends names the problem
    latest_size = parse_unverified(latest_note).size
    if saved_size and saved_size <= latest_size:
        reply = await stub.GetConsistencyProof(
            reporting_pb2.GetConsistencyProofRequest(first_tree_size=saved_size, second_tree_size=latest_size)
        )
        proof = [bytes(h) for h in reply.proof.path]
        latest_note = bytes(reply.tree_head.checkpoint)
    result = check_extends(saved_note, latest_note, proof, verifiers)
    if args.json:
        print_json(
            {
                **result.to_json(),
                "trusted_keys": [v.vkey() for v in verifiers],
                "keys_pinned": pinned,
                "proof": [h.hex() for h in proof],
                "checkpoint": _note_text(latest_note),
            }
        )
    else:
        print(result.message(), file=sys.stdout if result.ok else sys.stderr)
        if not pinned:
            print(
                "note: checked with the keys the log itself publishes; pass --vkey to pin the published keys",
                file=sys.stderr,
            )
    return 0 if result.ok else 1


def cmd_check_remote(args: argparse.Namespace) -> int:
    try:
        args.saved_note = pathlib.Path(args.saved).read_bytes()
    except OSError as exc:
        print(f"avgate ledger: cannot read the saved head: {exc}", file=sys.stderr)
        return 1
    return _run(args, _cmd_check_remote)


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        from avgate.ledger import verify
    except ImportError as exc:
        print(f"avgate ledger verify: the verifier is not available ({exc})", file=sys.stderr)
        return 2
    url = args.database_url or os.environ.get("REPORTING_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("set --database-url, REPORTING_DATABASE_URL or DATABASE_URL")
    try:
        trusted = _pinned(args.vkey)
        saved = [pathlib.Path(f).read_bytes() for f in args.saved]
    except (CommandError, OSError) as exc:
        print(f"avgate ledger verify: {exc}", file=sys.stderr)
        return 1

    async def run() -> Any:

        from avgate.kernel.db import libpq_url

        kwargs: dict[str, Any] = {"trusted": trusted, "saved_heads": saved}
        if args.batch_size:
            kwargs["batch_size"] = args.batch_size
        async with await psycopg.AsyncConnection.connect(libpq_url(url)) as conn:
            return await verify.verify_database(conn, **kwargs)

    report = asyncio.run(run())
    if args.json:
        value = report.to_json()
        print(value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False))
    elif report.ok:
        counts = ", ".join(
            f"{getattr(report, attr)} {what}"
            for attr, what in (
                ("entries_checked", "entries"),
                ("heads_checked", "heads"),
                ("saved_heads_checked", "saved heads"),
            )
            if getattr(report, attr, None) is not None
        )
        print(f"the ledger verifies ({counts}): every leaf, head, signature and consistency between heads checks out")
    else:
        first_bad = getattr(report, "first_bad_index", None)
        if first_bad is not None:
            print(f"the ledger does NOT verify; the first bad entry is at index {first_bad}", file=sys.stderr)
        else:
            print("the ledger does NOT verify", file=sys.stderr)
        for problem in report.problems:
            print(f"  {problem}", file=sys.stderr)
    return 0 if report.ok else 1


# ---------------------------------------------------------------------------- parser


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ledger = sub.add_parser("ledger", help="the audit ledger: heads, proofs, verification")
    ledger.set_defaults(func=lambda args: ledger.print_help() or 2)
    ledger.add_argument("--target", default=os.environ.get("AVGATE_GATEWAY", "127.0.0.1:50051"))
    ledger.add_argument("--api-key", help="caller's key, any role (default AVGATE_API_KEY)")
    add_gateway_tls_arguments(ledger)
    lsub = ledger.add_subparsers(dest="ledger_command")

    def vkey_option(p: argparse.ArgumentParser, help_text: str) -> None:
        p.add_argument("--vkey", action="append", default=[], metavar="VKEY", help=help_text)
        # --target and --api-key are also accepted after the subcommand
        p.add_argument("--target", default=argparse.SUPPRESS, help="the gateway (default AVGATE_GATEWAY)")
        p.add_argument("--api-key", default=argparse.SUPPRESS, help="caller's key (default AVGATE_API_KEY)")
        add_gateway_tls_arguments(p, repeated=True)

    trust = "trust only this note verifier key (<name>+<hash>+<key>; repeatable); default: the log's published keys"

    head = lsub.add_parser("head", help="the signed tree head (a C2SP checkpoint)")
    head.add_argument("--size", type=int, help="the head signed at this tree size (default: latest)")
    head.add_argument("--json", action="store_true", help="print JSON instead of the signed note")
    vkey_option(head, trust)
    head.set_defaults(func=lambda args: _run(args, _cmd_head))

    inclusion = lsub.add_parser("prove-inclusion", help="RFC 9162 inclusion proof of an entry, verified locally")
    leaf = inclusion.add_mutually_exclusive_group(required=True)
    leaf.add_argument("--index", type=int, help="leaf index (0-based)")
    leaf.add_argument("--entry-id", help="entry id (UUID)")
    inclusion.add_argument("--size", type=int, help="a signed tree size (default: latest)")
    inclusion.add_argument("--json", action="store_true")
    vkey_option(inclusion, trust)
    inclusion.set_defaults(func=lambda args: _run(args, _cmd_prove_inclusion))

    consistency = lsub.add_parser("prove-consistency", help="RFC 9162 consistency proof, verified locally")
    consistency.add_argument("--first", type=int, required=True, help="the smaller signed tree size")
    consistency.add_argument("--second", type=int, help="the larger signed tree size (default: latest)")
    consistency.add_argument("--json", action="store_true")
    vkey_option(consistency, trust)
    consistency.set_defaults(func=lambda args: _run(args, _cmd_prove_consistency))

    remote = lsub.add_parser("check-remote", help="prove the log extends a head you saved earlier")
    remote.add_argument("--saved", required=True, help="file holding a signed checkpoint (`avgate ledger head`)")
    remote.add_argument("--json", action="store_true")
    vkey_option(remote, "trust only this key (repeatable; pin the published keys); default: the log's published keys")
    remote.set_defaults(func=cmd_check_remote)

    verify = lsub.add_parser("verify", help="recompute and check the whole ledger in the database")
    verify.add_argument("--database-url", help="default REPORTING_DATABASE_URL or DATABASE_URL")
    verify.add_argument("--saved", action="append", default=[], metavar="FILE", help="a saved signed head to check")
    verify.add_argument("--batch-size", type=int)
    verify.add_argument("--json", action="store_true")
    vkey_option(verify, "trust only this key (repeatable); default: the keys stored with the ledger")
    verify.set_defaults(func=cmd_verify)

    keygen = lsub.add_parser("keygen", help="a new tree-head signing key for a log (signed-note format)")
    keygen.add_argument("--origin", required=True, help="the log's name, e.g. avgate.example/ledger")
    keygen.add_argument("--out", required=True, help="file to write the private key to (created 0600)")
    keygen.set_defaults(func=cmd_keygen)

    prune = lsub.add_parser("prune", help="archive and remove the left edge older than the retention period")
    prune.add_argument("--database-url", help="the pruner role's URL (default LEDGER_PRUNER_DATABASE_URL)")
    prune.add_argument("--archive-dir", required=True, help="where the export and its signed manifest go")
    prune.add_argument(
        "--signing-key-file", help="the ledger's key, to sign the manifest (default REPORTING_LEDGER_SIGNING_KEY_FILE)"
    )
    prune.set_defaults(func=cmd_prune)


def cmd_keygen(args: argparse.Namespace) -> int:
    from avgate.ledger.checkpoint import NoteSigner

    signer = NoteSigner.generate(args.origin)
    if not create_secret_file(pathlib.Path(args.out), signer.skey() + "\n"):
        print(f"avgate: {args.out} exists; not overwriting a signing key", file=sys.stderr)
        return 1
    print(signer.vkey())
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from avgate.kernel.db import libpq_url
    from avgate.ledger.checkpoint import NoteSigner
    from avgate.ledger.prune import prune

    url = args.database_url or os.environ.get("LEDGER_PRUNER_DATABASE_URL")
    key_file = args.signing_key_file or os.environ.get("REPORTING_LEDGER_SIGNING_KEY_FILE")
    if not url or not key_file:
        print("avgate: give --database-url (the pruner role) and --signing-key-file", file=sys.stderr)
        return 2
    signer = NoteSigner.from_skey_file(pathlib.Path(key_file))

    async def go() -> int:
        async with await psycopg.AsyncConnection.connect(libpq_url(url)) as conn:
            result = await prune(conn, signer, pathlib.Path(args.archive_dir))
        if result is None:
            print("nothing to prune: no archived-eligible entries older than the retention period")
            return 0
        print(
            json.dumps(
                {
                    "first_index": result.first_index,
                    "last_index": result.last_index,
                    "covered_tree_size": result.covered_tree_size,
                    "export": str(result.export_path),
                    "manifest": str(result.manifest_path),
                    "sha256": result.sha256.hex(),
                },
                indent=2,
            )
        )
        return 0

    return asyncio.run(go())
