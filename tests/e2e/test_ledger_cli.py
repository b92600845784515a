"""`avgate ledger ...` against the running stack, as a regulator uses it.

The proofs the command prints are checked with verifiers that share no code with
avgate.ledger: pymerkle (an independent RFC 9162 implementation) for inclusion
proofs and tree roots, and a literal transcription of RFC 9162 §2.1.4.2 below for
consistency proofs (pymerkle's consistency proofs have another layout, so it
cannot check an RFC 9162 path). Signatures are checked with `cryptography`
directly from the published Ed25519 keys.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pymerkle import InclusionProof, InmemoryTree, InvalidProof, verify_inclusion
from pymerkle.core import _inclusion_path_layout

from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import REPO, Database
from tests.support import RunningStack

pytestmark = pytest.mark.e2e

DEV_KEY_ENTRIES = 3  # creating the development keys (provider, regulator, operator) ledgers one entry each
WAIT_SECONDS = 30


# ------------------------------------------------------------------ independent checks


def rfc9162_verify_consistency(
    first: int, second: int, path: list[bytes], first_hash: bytes, second_hash: bytes
) -> bool:
    """RFC 9162 §2.1.4.2, step by step, for 0 < first < second."""

    def node(left: bytes, right: bytes) -> bytes:
        return hashlib.sha256(b"\x01" + left + right).digest()

    # 1. If consistency_path is an empty array, stop and fail the proof verification.
    if not path:
        return False
    # 2. If first is an exact power of 2, then prepend first_hash to the consistency_path array.
    if first & (first - 1) == 0:
        path = [first_hash, *path]
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = first - 1, second - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path[1:]:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # 1. Set fr to HASH(0x01 || c || fr).  2. Set sr to HASH(0x01 || c || sr).
            fr, sr = node(c, fr), node(c, sr)
            # 3. If LSB(fn) is not set, then right-shift both fn and sn equally until
            #    either LSB(fn) is set or fn is 0.
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            # Otherwise: Set sr to HASH(0x01 || sr || c).
            sr = node(sr, c)
        # c. Finally, right-shift both fn and sn one time.
        fn, sn = fn >> 1, sn >> 1
    # 7. Verify fr == first_hash, sr == second_hash and sn == 0.
    return fr == first_hash and sr == second_hash and sn == 0


def pymerkle_verify_inclusion(leaf_hash: bytes, index: int, size: int, audit_path: list[bytes], root: bytes) -> None:
    """pymerkle's verifier on an RFC 9162 audit path (pymerkle counts leaves from 1 and puts the leaf first).

    Raises pymerkle.InvalidProof if it does not verify.
    """
    rule, _ = _inclusion_path_layout(index + 1, size)
    proof = InclusionProof("sha256", True, size, index + 1, rule, [leaf_hash, *audit_path])
    verify_inclusion(leaf_hash, root, proof, index=index + 1, size=size, algorithm="sha256")


def verify_note_signature(note: bytes, public_keys: dict[str, list[bytes]]) -> tuple[str, int, bytes]:
    """Checks a C2SP signed note's Ed25519 signature with the raw keys; returns (origin, size, root)."""
    text = note.decode()
    split = text.rindex("\n\n")
    body, signature_lines = text[: split + 1], text[split + 2 :].splitlines()
    origin, size, root_b64 = body.splitlines()[:3]
    verified = False
    for line in signature_lines:
        assert line.startswith("\u2014 "), line
        name, b64 = line[2:].split(" ")
        raw = base64.b64decode(b64)
        for key in public_keys.get(name, []):
            if hashlib.sha256(name.encode() + b"\n\x01" + key).digest()[:4] == raw[:4]:
                Ed25519PublicKey.from_public_bytes(key).verify(raw[4:], body.encode())  # raises if forged
                verified = verified or name == origin
    assert verified, "no signature by the log's key"
    return origin, int(size), base64.b64decode(root_b64)


# ------------------------------------------------------------------------------ stack


@dataclass
class Ledger:
    stack: RunningStack
    key: str
    saved_file: pathlib.Path
    saved: dict  # type: ignore[type-arg]  # `head --json` at the time the head was saved

    def stub_call(self, method: str, request: object, key: str | None = None) -> object:
        with grpc.insecure_channel(self.stack.gateway) as channel:
            stub = reporting_pb2_grpc.AuditLedgerServiceStub(channel)
            metadata = (("authorization", f"Bearer {key or self.key}"),)
            return getattr(stub, method)(request, metadata=metadata, timeout=10)

    def latest(self) -> reporting_pb2.SignedTreeHead:
        reply = self.stub_call("GetLatestTreeHead", reporting_pb2.GetLatestTreeHeadRequest())
        return reply.tree_head  # type: ignore[attr-defined, no-any-return]

    def public_keys(self) -> dict[str, list[bytes]]:
        keys: dict[str, list[bytes]] = {}
        for k in self.stub_call("ListSigningKeys", reporting_pb2.ListSigningKeysRequest()).keys:  # type: ignore[attr-defined]
            keys.setdefault(k.key_name, []).append(bytes(k.public_key))
        return keys

    def vkeys(self) -> list[str]:
        reply = self.stub_call("ListSigningKeys", reporting_pb2.ListSigningKeysRequest())
        return [k.verifier_key for k in reply.keys]  # type: ignore[attr-defined]

    def entries(self, size: int, key: str | None = None) -> list[reporting_pb2.LedgerEntry]:
        """Entries [0, size) as the regulator lists them (or the holder of `key`)."""
        reply = self.stub_call("ListEntries", reporting_pb2.ListEntriesRequest(start_index=0, end_index=size), key)
        return list(reply.entries)  # type: ignore[attr-defined]

    def operator_entries(self, size: int) -> list[reporting_pb2.LedgerEntry]:
        return self.entries(size, self.stack.description["development_api_keys"]["operator"])

    def wait_for_size(self, at_least: int) -> int:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            try:
                size = self.latest().tree_size
            except grpc.RpcError as exc:
                if exc.code() is not grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    raise
                size = 0
            if size >= at_least:
                return int(size)
            assert time.monotonic() < deadline, f"no signed head reached size {at_least} (latest {size})"
            time.sleep(0.2)

    def avgate(self, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "AVGATE_API_KEY": key or self.key}
        return subprocess.run(
            [sys.executable, "-m", "avgate.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

    def ledger(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.avgate("ledger", "--target", self.stack.gateway, *args)

    def create_keys(self, count: int, tag: str) -> None:
        """Each key the operator creates is one more ledger entry."""
        operator = self.stack.description["development_api_keys"]["operator"]
        for i in range(count):
            name = ["--name", f"{tag} {i}", "--role", "provider", "--tenant", f"ledger-{tag}"]
            done = self.avgate("keys", "--target", self.stack.gateway, "create", *name, key=operator)
            assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def ledger(running: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    directory = tmp_path_factory.mktemp("regulator")
    state = Ledger(running, running.description["development_api_keys"]["regulator"], directory / "saved.txt", {})
    state.create_keys(3, "before")
    state.wait_for_size(DEV_KEY_ENTRIES + 3)
    saved = state.ledger("head")
    assert saved.returncode == 0, saved.stderr
    state.saved_file.write_text(saved.stdout)
    head = state.ledger("head", "--json")
    assert head.returncode == 0, head.stderr
    state.saved = json.loads(head.stdout)
    state.create_keys(3, "after")
    state.wait_for_size(state.saved["tree_size"] + 3)
    yield state


# ------------------------------------------------------------------------------ tests


def test_head_prints_the_signed_checkpoint_and_its_fields(ledger: Ledger) -> None:
    saved_note = ledger.saved_file.read_bytes()
    origin, size, root = verify_note_signature(saved_note, ledger.public_keys())
    assert size >= DEV_KEY_ENTRIES + 3
    head = ledger.saved
    assert set(head) == {"origin", "tree_size", "root_hash", "timestamp", "checkpoint"}
    verify_note_signature(head["checkpoint"].encode(), ledger.public_keys())
    assert head["checkpoint"].splitlines()[0] == head["origin"]
    assert int(head["checkpoint"].splitlines()[1]) == head["tree_size"]
    assert base64.b64decode(head["checkpoint"].splitlines()[2]).hex() == head["root_hash"]
    assert head["origin"] == origin
    if head["tree_size"] == size:  # no new head was signed between the two calls
        assert head["root_hash"] == root.hex()
    assert head["timestamp"].endswith("Z")
    when = datetime.datetime.fromisoformat(head["timestamp"].replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 600


def rfc9162_root(leaf_hashes: list[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 §2.1.1 over leaf hashes, as written there (k: largest power of 2 < n)."""
    if len(leaf_hashes) == 1:
        return leaf_hashes[0]
    k = 1
    while k * 2 < len(leaf_hashes):
        k *= 2
    return hashlib.sha256(b"\x01" + rfc9162_root(leaf_hashes[:k]) + rfc9162_root(leaf_hashes[k:])).digest()


def test_the_root_of_every_signed_head_matches_the_entries_rebuilt_with_pymerkle(ledger: Ledger) -> None:
    latest = ledger.latest()
    entries = ledger.operator_entries(latest.tree_size)  # an operator reads every entry in full
    assert [e.sequence_number for e in entries] == list(range(latest.tree_size))
    tree = InmemoryTree(algorithm="sha256")
    for e in entries:
        assert not e.redacted
        tree.append_entry(e.canonical_json)
        assert hashlib.sha256(b"\x00" + e.canonical_json).digest() == e.leaf_hash
    assert tree.get_root(latest.tree_size) == latest.root_hash
    assert tree.get_root(ledger.saved["tree_size"]).hex() == ledger.saved["root_hash"]
    head = ledger.ledger("head", "--size", str(ledger.saved["tree_size"]), "--json")
    assert head.returncode == 0, head.stderr
    assert json.loads(head.stdout)["root_hash"] == ledger.saved["root_hash"]


def test_a_regulator_gets_other_events_redacted_and_still_rebuilds_every_root(ledger: Ledger) -> None:
    """API-key changes are no regulator's record: it gets their index, time and leaf hash only."""
    latest = ledger.latest()
    full = ledger.operator_entries(latest.tree_size)
    mine = ledger.entries(latest.tree_size)
    assert [e.sequence_number for e in mine] == list(range(latest.tree_size))
    key_changes = [e.sequence_number for e in full if json.loads(e.canonical_json)["action"].startswith("api_key.")]
    assert len(key_changes) >= DEV_KEY_ENTRIES + 6
    for index in key_changes:
        assert mine[index].redacted
        assert (mine[index].canonical_json, mine[index].entry_id) == (b"", "")
        assert mine[index].leaf_hash == full[index].leaf_hash
        assert mine[index].integrate_time == full[index].integrate_time
    for entry in mine:
        if not entry.redacted:
            assert hashlib.sha256(b"\x00" + entry.canonical_json).digest() == entry.leaf_hash
    leaf_hashes = [bytes(e.leaf_hash) for e in mine]
    assert rfc9162_root(leaf_hashes) == latest.root_hash
    assert rfc9162_root(leaf_hashes[: ledger.saved["tree_size"]]).hex() == ledger.saved["root_hash"]
    done = ledger.ledger("prove-inclusion", "--index", str(key_changes[-1]), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["leaf_hash"] == mine[key_changes[-1]].leaf_hash.hex()


@pytest.mark.parametrize("which", ["first", "last", "entry-id", "saved size"])
def test_inclusion_proofs_verify_with_pymerkle(ledger: Ledger, which: str) -> None:
    latest = ledger.latest()
    args = ["--index", "0"]
    if which == "last":
        args = ["--index", str(latest.tree_size - 1)]
    elif which == "entry-id":
        entry = ledger.operator_entries(latest.tree_size)[DEV_KEY_ENTRIES + 1]
        args = ["--entry-id", entry.entry_id]
    elif which == "saved size":
        args = ["--index", "2", "--size", str(ledger.saved["tree_size"])]
    done = ledger.ledger("prove-inclusion", *args, "--json")
    assert done.returncode == 0, done.stderr
    proof = json.loads(done.stdout)
    assert {"leaf_index", "tree_size", "leaf_hash", "audit_path", "root_hash", "checkpoint"} <= set(proof)
    _, size, root = verify_note_signature(proof["checkpoint"].encode(), ledger.public_keys())
    assert (size, root.hex()) == (proof["tree_size"], proof["root_hash"])
    if which == "saved size":
        assert proof["tree_size"] == ledger.saved["tree_size"] and proof["root_hash"] == ledger.saved["root_hash"]
    if which == "entry-id":
        assert proof["leaf_index"] == DEV_KEY_ENTRIES + 1
    leaf = bytes.fromhex(proof["leaf_hash"])
    path = [bytes.fromhex(h) for h in proof["audit_path"]]
    assert all(len(h) == 32 for h in path)
    pymerkle_verify_inclusion(leaf, proof["leaf_index"], proof["tree_size"], path, root)
    # the independent verifier is not a rubber stamp
    with pytest.raises(InvalidProof):
        pymerkle_verify_inclusion(leaf, proof["leaf_index"], proof["tree_size"], path, hashlib.sha256(b"x").digest())
    if path:
        with pytest.raises(InvalidProof):
            pymerkle_verify_inclusion(leaf, proof["leaf_index"], proof["tree_size"], [path[0][::-1], *path[1:]], root)


def test_consistency_proof_verifies_with_a_literal_rfc9162_verifier(ledger: Ledger) -> None:
    first = ledger.saved["tree_size"]
    done = ledger.ledger("prove-consistency", "--first", str(first), "--json")
    assert done.returncode == 0, done.stderr
    proof = json.loads(done.stdout)
    assert proof["first_tree_size"] == first and proof["first_root_hash"] == ledger.saved["root_hash"]
    second = proof["second_tree_size"]
    assert second >= first + 3
    _, size, root2 = verify_note_signature(proof["checkpoint"].encode(), ledger.public_keys())
    assert (size, root2.hex()) == (second, proof["second_root_hash"])
    path = [bytes.fromhex(h) for h in proof["path"]]
    root1 = bytes.fromhex(ledger.saved["root_hash"])
    assert rfc9162_verify_consistency(first, second, path, root1, root2)
    assert not rfc9162_verify_consistency(first, second, path, hashlib.sha256(b"rewritten").digest(), root2)
    assert not rfc9162_verify_consistency(first, second, path[:-1], root1, root2)
    # and with an explicit second size
    again = ledger.ledger("prove-consistency", "--first", str(first), "--second", str(second), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["path"] == proof["path"]


def test_check_remote_proves_the_log_extends_the_saved_head(ledger: Ledger) -> None:
    done = ledger.ledger("check-remote", "--saved", str(ledger.saved_file))
    assert done.returncode == 0, done.stderr
    assert "extends your saved head at size" in done.stdout
    assert f"saved head at size {ledger.saved['tree_size']}" in done.stdout
    pinned = [arg for vkey in ledger.vkeys() for arg in ("--vkey", vkey)]
    done = ledger.ledger("check-remote", "--saved", str(ledger.saved_file), *pinned, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] is True and result["keys_pinned"] is True
    assert result["saved"]["root_hash"] == ledger.saved["root_hash"]


def test_check_remote_refuses_a_saved_head_the_log_does_not_extend(ledger: Ledger, tmp_path: pathlib.Path) -> None:
    text = ledger.saved_file.read_text()
    lines = text.split("\n")
    # a head of the same size with another root, "signed" by the log: the signature no longer matches
    lines[2] = base64.b64encode(hashlib.sha256(b"another history").digest()).decode()
    tampered = tmp_path / "tampered.txt"
    tampered.write_text("\n".join(lines))
    done = ledger.ledger("check-remote", "--saved", str(tampered))
    assert done.returncode == 1
    assert "does NOT extend" in done.stderr and "signature" in done.stderr


def test_check_remote_with_a_wrong_pinned_key_refuses(ledger: Ledger) -> None:
    from avgate.ledger.checkpoint import NoteSigner

    stranger = NoteSigner.generate(ledger.saved["origin"]).vkey()
    done = ledger.ledger("check-remote", "--saved", str(ledger.saved_file), "--vkey", stranger)
    assert done.returncode == 1
    assert "does NOT extend" in done.stderr and "not by a trusted key" in done.stderr


def test_errors_are_printed_as_grpc_status_json(ledger: Ledger) -> None:
    done = ledger.ledger("prove-inclusion", "--index", "1000000", "--json")
    assert done.returncode == 1
    error = json.loads(done.stderr)["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    done = ledger.ledger("head", "--size", "1000000")
    assert done.returncode == 1 and json.loads(done.stderr)["error"]["code"] == "NOT_FOUND"


def test_verify_accepts_the_stacks_ledger(ledger: Ledger, database: Database) -> None:
    done = ledger.avgate(
        "ledger", "verify", "--database-url", database.admin_url, "--saved", str(ledger.saved_file), "--json"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["saved_heads_checked"] == 1
    assert report["entries_checked"] >= ledger.saved["tree_size"] + 3
    pinned = [arg for vkey in ledger.vkeys() for arg in ("--vkey", vkey)]
    done = ledger.avgate("ledger", "verify", "--database-url", database.admin_url, *pinned)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("the ledger verifies (")


def test_verify_refuses_a_saved_head_of_another_history(
    ledger: Ledger, database: Database, tmp_path: pathlib.Path
) -> None:
    from avgate.ledger.checkpoint import NoteSigner

    lines = ledger.saved_file.read_text().split("\n")
    lines[2] = base64.b64encode(hashlib.sha256(b"another history").digest()).decode()
    tampered = tmp_path / "tampered.txt"
    tampered.write_text("\n".join(lines))
    done = ledger.avgate("ledger", "verify", "--database-url", database.admin_url, "--saved", str(tampered))
    assert done.returncode == 1
    assert "does NOT verify" in done.stderr
    stranger = NoteSigner.generate(ledger.saved["origin"]).vkey()
    done = ledger.avgate("ledger", "verify", "--database-url", database.admin_url, "--vkey", stranger, "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["ok"] is False


def test_without_json_the_proofs_say_they_verified(ledger: Ledger) -> None:
    # options given after the subcommand work too
    done = ledger.avgate("ledger", "prove-inclusion", "--index", "1", "--target", ledger.stack.gateway)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("leaf 1 (hash ") and "proof verified" in done.stdout
    first = str(ledger.saved["tree_size"])
    done = ledger.ledger("prove-consistency", "--first", first)
    assert done.returncode == 0, done.stderr
    assert f"extends the signed tree of size {first}: proof verified" in done.stdout
