"""`avgate feed export` and `avgate feed verify-export`: a signed bundle for offline handover,
fetched and checked the way a regulator would.

avgate feed export --since T --until T --out DIR [filters] [--reporting-key PEM] [--vkey VKEY ...]
avgate feed verify-export DIR --reporting-key PEM [--vkey VKEY ...]

`export` asks for a bundle (CreateExport; the request id makes a retry return the same one),
waits until it is built, downloads its files and verifies them. `verify-export` verifies a
bundle already on disk, with no network. What is verified:

- every file's SHA-256 and size against the manifest;
- the manifest's Ed25519 signature (manifest.sig) with reporting's public key (--reporting-key,
  the PEM an authority already holds to check deliveries);
- the checkpoint's signature with the ledger's keys (--vkey, else — online only — the keys the
  log publishes), and that the manifest names this checkpoint's size and root;
- online, also that the export's own ledger entry is in that tree: its canonical JSON is read
  (ListEntries), hashed here (RFC 9162 leaf hash), checked to be this export's "feed.export"
  entry, and proven included (GetInclusionProof, verified here against the signed root).

Exit status 0 only when everything verifies; the result is printed as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import pathlib
import sys
import time
import uuid
from typing import Any

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from avgate.cli.common import add_gateway_tls_arguments, gateway_channel, print_json, print_rpc_error
from avgate.cli.feed_filter import incident_filter
from avgate.ledger.checkpoint import NoteError, NoteVerifier, open_checkpoint
from avgate.ledger.merkle import ProofError, leaf_hash, verify_inclusion

FILES = ("incidents.jsonl", "checkpoint", "manifest.json", "manifest.sig")
WAIT_SECONDS = 300


class BundleError(Exception):
    """The bundle does not verify; the message says what failed."""


def _reporting_key(path: str) -> Ed25519PublicKey:
    key = load_pem_public_key(pathlib.Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path} is not an Ed25519 public key")
    return key


def verify_files(
    directory: pathlib.Path, reporting_key: Ed25519PublicKey, verifiers: list[NoteVerifier]
) -> dict[str, Any]:
    """Checks a bundle on disk; returns the manifest. BundleError names the first thing that fails."""
    for name in FILES:
        if not (directory / name).is_file():
            raise BundleError(f"the bundle has no {name}")
    manifest_bytes = (directory / "manifest.json").read_bytes()
    key_name, _, signature_b64 = (directory / "manifest.sig").read_text().strip().partition("\n")
    try:
        reporting_key.verify(base64.b64decode(signature_b64.strip()), manifest_bytes)
    except (InvalidSignature, ValueError) as exc:
        raise BundleError(
            f"the manifest's signature ({key_name}) does not verify with the given reporting key"
        ) from exc
    manifest = json.loads(manifest_bytes)
    if manifest.get("format") != "avgate-export-manifest/v1":
        raise BundleError(f"unknown manifest format {manifest.get('format')!r}")
    for described in manifest["files"]:
        data = (directory / described["name"]).read_bytes()
        if len(data) != described["size_bytes"] or hashlib.sha256(data).hexdigest() != described["sha256"]:
            raise BundleError(f"{described['name']} is not the file the manifest describes")
    lines = (directory / "incidents.jsonl").read_bytes().splitlines()
    if len(lines) != manifest["item_count"]:
        raise BundleError(f"incidents.jsonl holds {len(lines)} lines, the manifest says {manifest['item_count']}")
    try:
        checkpoint = open_checkpoint((directory / "checkpoint").read_bytes(), verifiers)
    except NoteError as exc:
        raise BundleError(f"the checkpoint does not verify with the ledger's keys: {exc}") from exc
    head = manifest["tree_head"]
    if head != {"tree_size": checkpoint.size, "root_hash": checkpoint.root_hash.hex()}:
        raise BundleError("the manifest names another tree head than the bundle's checkpoint")
    if manifest["ledger_entry"]["leaf_index"] >= checkpoint.size:
        raise BundleError("the checkpoint's tree does not reach the export's own ledger entry")
    return manifest


async def _prove_entry(ledger: Any, metadata: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """The export's ledger entry, hashed here, is this export's and is in the checkpoint's tree."""
    from avgate.reporting.v1 import reporting_pb2

    size = int(manifest["tree_head"]["tree_size"])
    index = int(manifest["ledger_entry"]["leaf_index"])
    entries = await ledger.ListEntries(
        reporting_pb2.ListEntriesRequest(start_index=index, end_index=index + 1), metadata=metadata, timeout=30
    )
    if len(entries.entries) != 1:
        raise BundleError(f"the ledger has no entry at leaf {index}")
    entry = entries.entries[0]
    if entry.redacted:
        raise BundleError(
            f"the ledger shows leaf {index} to this key redacted: only the regulator that asked for "
            "the export, or an operator, can check its ledger entry online (verify offline instead)"
        )
    document = json.loads(entry.canonical_json)
    if document.get("action") != "feed.export" or document.get("subject", {}).get("id") != manifest["export_id"]:
        raise BundleError(f"leaf {index} is not this export's ledger entry")
    if entry.entry_id != manifest["ledger_entry"]["id"]:
        raise BundleError(
            f"leaf {index} holds entry {entry.entry_id}, the manifest names {manifest['ledger_entry']['id']}"
        )
    proof = await ledger.GetInclusionProof(
        reporting_pb2.GetInclusionProofRequest(leaf_index=index, tree_size=size), metadata=metadata, timeout=30
    )
    try:
        verify_inclusion(
            leaf_hash(bytes(entry.canonical_json)),
            index,
            size,
            [bytes(h) for h in proof.proof.audit_path],
            bytes.fromhex(manifest["tree_head"]["root_hash"]),
        )
    except ProofError as exc:
        raise BundleError(f"the export's ledger entry is NOT proven in the checkpoint's tree: {exc}") from exc
    return {"leaf_index": index, "entry_id": entry.entry_id, "included_in_tree_size": size}


async def _verifiers(ledger: Any, metadata: Any, pinned: list[str]) -> list[NoteVerifier]:
    if pinned:
        return [NoteVerifier.from_vkey(v) for v in pinned]
    from avgate.reporting.v1 import reporting_pb2

    reply = await ledger.ListSigningKeys(reporting_pb2.ListSigningKeysRequest(), metadata=metadata, timeout=30)
    return [NoteVerifier.from_vkey(k.verifier_key) for k in reply.keys]


def _request(args: argparse.Namespace) -> Any:
    from avgate.reporting.v1 import reporting_pb2

    return reporting_pb2.CreateExportRequest(
        request_id=args.request_id or f"cli-{uuid.uuid4().hex}",
        filter=reporting_pb2.FeedFilter(incidents=incident_filter(args)),
    )


async def _export(args: argparse.Namespace) -> int:
    from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc

    metadata = (("authorization", f"Bearer {args.api_key}"),)
    out = pathlib.Path(args.out)
    async with gateway_channel(args) as channel:
        feed = reporting_pb2_grpc.RegulatorFeedServiceStub(channel)
        ledger = reporting_pb2_grpc.AuditLedgerServiceStub(channel)
        created = await feed.CreateExport(_request(args), metadata=metadata, timeout=30)
        export = created.export
        deadline = time.monotonic() + WAIT_SECONDS
        while export.state == reporting_pb2.EXPORT_STATE_PENDING:
            if time.monotonic() > deadline:
                raise BundleError(f"export {export.export_id} is still being built after {WAIT_SECONDS} s")
            await asyncio.sleep(1)
            export = (
                await feed.GetExport(reporting_pb2.GetExportRequest(export_id=export.export_id), metadata=metadata)
            ).export
        if export.state != reporting_pb2.EXPORT_STATE_READY:
            raise BundleError(f"export {export.export_id} is {reporting_pb2.ExportState.Name(export.state)}")
        for described in export.files:
            data = bytearray()
            async for chunk in feed.DownloadExport(
                reporting_pb2.DownloadExportRequest(export_id=export.export_id, file=described.kind),
                metadata=metadata,
            ):
                data += chunk.chunk
            _write(out / described.name, bytes(data))
        verifiers = await _verifiers(ledger, metadata, args.vkey)
        manifest = verify_files(out, _reporting_key(args.reporting_key), verifiers)
        inclusion = await _prove_entry(ledger, metadata, manifest)
    print_json(
        {
            "export_id": export.export_id,
            "directory": str(out),
            "item_count": manifest["item_count"],
            "tree_size": manifest["tree_head"]["tree_size"],
            "manifest_signature": "verified",
            "checkpoint_signature": "verified",
            "export_ledger_entry": inclusion,
        }
    )
    return 0


def _write(path: pathlib.Path, data: bytes) -> None:
    path.write_bytes(data)


def cmd_export(args: argparse.Namespace) -> int:
    args.api_key = args.api_key or os.environ.get("AVGATE_API_KEY")
    if not args.api_key:
        raise SystemExit("set --api-key or AVGATE_API_KEY (a regulator's or an operator's key)")
    pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(_export(args))
    except grpc.aio.AioRpcError as exc:
        return print_rpc_error(exc)
    except (BundleError, NoteError, OSError, ValueError) as exc:
        print(f"avgate feed export: {exc}", file=sys.stderr)
        return 1


def cmd_verify_export(args: argparse.Namespace) -> int:
    try:
        if not args.vkey:
            raise BundleError("offline verification needs the ledger's key: pass --vkey")
        manifest = verify_files(
            pathlib.Path(args.directory),
            _reporting_key(args.reporting_key),
            [NoteVerifier.from_vkey(v) for v in args.vkey],
        )
    except (BundleError, NoteError, OSError, ValueError) as exc:
        print(f"avgate feed verify-export: {exc}", file=sys.stderr)
        return 1
    print_json({"export_id": manifest["export_id"], "item_count": manifest["item_count"], "verified": True})
    return 0


def add_parsers(fsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    export = fsub.add_parser("export", help="fetch a signed export bundle and verify it")
    export.add_argument("--target", default=os.environ.get("AVGATE_GATEWAY", "127.0.0.1:50051"))
    export.add_argument("--api-key", help="a regulator's or operator's key (default AVGATE_API_KEY)")
    add_gateway_tls_arguments(export)
    export.add_argument("--since", required=True, help="incidents created at or after this ISO 8601 time")
    export.add_argument("--until", required=True, help="incidents created before this ISO 8601 time")
    export.add_argument("--category", action="append", default=[])
    export.add_argument("--department", action="append", default=[])
    export.add_argument("--region", action="append", default=[])
    export.add_argument("--tenant", action="append", default=[])
    export.add_argument("--request-id", help="a retry with the same id returns the same bundle")
    export.add_argument("--out", required=True, help="directory for the bundle's files")
    export.add_argument("--reporting-key", required=True, help="reporting's Ed25519 public key (PEM)")
    export.add_argument("--vkey", action="append", default=[], help="pin the ledger's note verifier key")
    export.set_defaults(func=cmd_export)
    verify = fsub.add_parser("verify-export", help="verify a bundle on disk, offline")
    verify.add_argument("directory")
    verify.add_argument("--reporting-key", required=True, help="reporting's Ed25519 public key (PEM)")
    verify.add_argument("--vkey", action="append", default=[], help="the ledger's note verifier key (required)")
    verify.set_defaults(func=cmd_verify_export)
