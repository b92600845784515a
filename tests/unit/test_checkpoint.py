"""Signed notes and C2SP checkpoints: interoperable with Go's sumdb/note, strict on input."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from avgate.ledger.checkpoint import (
    MAX_BODY_BYTES,
    Checkpoint,
    InvalidSignatureError,
    NoteError,
    NoteSigner,
    NoteVerifier,
    Signature,
    UnverifiedNoteError,
    key_hash,
    open_checkpoint,
    open_note,
    sign_checkpoint,
    sign_note,
)

# golang.org/x/mod/sumdb/note/note_test.go
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
NEUMANN_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"

# github.com/transparency-dev/formats/log/note_test.go: key pairs made by Go's note.GenerateKey.
GO_KEY_PAIRS = {
    "Log": (
        "PRIVATE+KEY+Log+2271c621+AdEIq9FLRQni54Wg68T96VJO+iayOaulswav2DUMKgvQ",
        "Log+2271c621+AemuH5ooBpEPcr+W8onrjA1NfuzBVHdezakU81Ekarvs",
    ),
    "Known": (
        "PRIVATE+KEY+Known+451c786d+AQPRoE2+Z+Ed1HaHBA9F/FfracvcZ2rDU39kCecMEoci",
        "Known+451c786d+AXAQ0T7lbwuY4ABJ9/MYY9bWV3hmSyOGVt2x42NkmdUH",
    ),
    "KnownAgain": (
        "PRIVATE+KEY+KnownAgain+4893b26c+ARhZda/l25zjGZswYLDZsLNRzNpmv5wYTN9IoTr1OJ2+",
        "KnownAgain+4893b26c+AQ+LR7BFF/F/dkpIBjBpSvT0crkteizuUkavAoGeaYMj",
    ),
    "Unknown": (
        "PRIVATE+KEY+Unknown+fdbb2e08+Aav2knTC6orbhXX8pMWuNiWgO+Wwk2DB+h1eU2Q1W1nU",
        "Unknown+fdbb2e08+AWgRIYZ+8x1Vl+1Q+sR8zciNHiYI1SdlBjNw+RV0rots",
    ),
}

# A checkpoint signed by sum.golang.org (transparency-dev/formats/log/note_test.go) and its key.
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_CHECKPOINT = (
    "go.sum database tree\n"
    "6476701\n"
    "mb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk=\n"
    "\n"
    "— sum.golang.org Az3grsLX85Gz+s1SiTbgkuqxgItqFq7gsMUEyVnrsa9LM7Us9S+1xbFIGu95949rj4nPRYfvimWEPWL+o3GeoWwOoAw=\n"
)

ORIGIN = "avgate.example/ledger"
ROOT = hashlib.sha256(b"root").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()


@pytest.fixture(scope="module")
def log_signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture(scope="module")
def witness_signer() -> NoteSigner:
    return NoteSigner.generate("witness.example/w1")


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    return Checkpoint(ORIGIN, 42, ROOT, timestamp_ms=1_700_000_000_123)


@pytest.fixture(scope="module")
def signed(checkpoint: Checkpoint, log_signer: NoteSigner) -> bytes:
    return sign_checkpoint(checkpoint, log_signer)


def _sig_line_parts(note: bytes) -> tuple[bytes, str, bytes]:
    """(body + blank line, key name, decoded signature with key hash) of a singly-signed note."""
    split = note.rfind(b"\n\n")
    head, line = note[: split + 2], note[split + 2 :].decode()
    name, b64 = line.removeprefix("— ").removesuffix("\n").split(" ")
    return head, name, base64.b64decode(b64)


def _with_sig(head: bytes, name: str, raw: bytes) -> bytes:
    return head + f"— {name} {base64.b64encode(raw).decode()}\n".encode()


class TestGoSumdbNoteVectors:
    def test_signer_from_go_skey_produces_byte_identical_note(self) -> None:
        signer = NoteSigner.from_skey(PETER_SKEY)
        assert signer.sign(NEUMANN_TEXT.encode()) == (NEUMANN_TEXT + "\n" + PETER_SIG).encode()

    def test_skey_and_vkey_round_trip(self) -> None:
        signer = NoteSigner.from_skey(PETER_SKEY)
        assert signer.skey() == PETER_SKEY
        assert signer.vkey() == PETER_VKEY
        assert signer.key_hash == 0xC74F20A3
        assert NoteVerifier.from_vkey(PETER_VKEY).vkey() == PETER_VKEY
        assert NoteVerifier.from_vkey(PETER_VKEY) == signer.verifier()

    def test_verifier_opens_go_signed_note(self) -> None:
        body, sigs = open_note((NEUMANN_TEXT + "\n" + PETER_SIG).encode(), [NoteVerifier.from_vkey(PETER_VKEY)])
        assert body == NEUMANN_TEXT.encode()
        assert [(s.name, s.key_hash, s.verified) for s in sigs] == [("PeterNeumann", 0xC74F20A3, True)]
        assert sigs[0].line() == PETER_SIG

    def test_signature_by_unknown_key_is_returned_unverified(self) -> None:
        note = (NEUMANN_TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
        _, sigs = open_note(note, [NoteVerifier.from_vkey(PETER_VKEY)])
        assert [(s.name, s.key_hash, s.verified) for s in sigs] == [
            ("PeterNeumann", 0xC74F20A3, True),
            ("EnochRoot", 0xAF0CFE78, False),
        ]

    def test_both_signatures_verified_when_both_keys_known(self) -> None:
        note = (NEUMANN_TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
        verifiers = [NoteVerifier.from_vkey(PETER_VKEY), NoteVerifier.from_vkey(ENOCH_VKEY)]
        _, sigs = open_note(note, verifiers)
        assert [s.verified for s in sigs] == [True, True]

    def test_no_known_key_is_rejected_and_reports_the_signatures(self) -> None:
        note = (NEUMANN_TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
        with pytest.raises(UnverifiedNoteError) as err:
            open_note(note, [])
        assert [s.name for s in err.value.signatures] == ["PeterNeumann", "EnochRoot"]

    def test_identical_verifier_listed_twice_is_not_ambiguous(self) -> None:
        enoch = NoteVerifier.from_vkey(ENOCH_VKEY)
        _, sigs = open_note((NEUMANN_TEXT + "\n" + ENOCH_SIG).encode(), [enoch, enoch])
        assert sigs[0].verified

    def test_invalid_signature_by_known_key_rejects_note(self) -> None:
        bad = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
        with pytest.raises(InvalidSignatureError, match=r"PeterNeumann\+c74f20a3"):
            open_note((NEUMANN_TEXT + "\n" + bad).encode(), [NoteVerifier.from_vkey(PETER_VKEY)])

    def test_duplicate_signatures_are_reported_once(self) -> None:
        enoch_abcd = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
        note = NEUMANN_TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG + enoch_abcd
        _, sigs = open_note(note.encode(), [NoteVerifier.from_vkey(PETER_VKEY)])
        assert [(s.line(), s.verified) for s in sigs] == [
            (PETER_SIG, True),
            (ENOCH_SIG, False),
            (enoch_abcd, False),
        ]

    def test_too_many_signature_lines_are_rejected(self) -> None:
        with pytest.raises(NoteError, match="signature lines"):
            open_note((NEUMANN_TEXT + "\n" + PETER_SIG * 101).encode(), [NoteVerifier.from_vkey(PETER_VKEY)])

    def test_signature_under_another_name_is_unknown(self) -> None:
        misnamed = PETER_SIG.replace("PeterNeumann", "CarmenSandiego")
        with pytest.raises(UnverifiedNoteError):
            open_note((NEUMANN_TEXT + "\n" + misnamed).encode(), [NoteVerifier.from_vkey(PETER_VKEY)])

    @pytest.mark.parametrize(
        "note",
        [
            pytest.param(NEUMANN_TEXT.encode(), id="no-signature-block"),
            pytest.param((NEUMANN_TEXT + "\n").encode(), id="blank-line-without-signatures"),
            pytest.param((NEUMANN_TEXT + "\n" + PETER_SIG[:-1]).encode(), id="signature-without-newline"),
            pytest.param(("\x01" + NEUMANN_TEXT + "\n" + PETER_SIG).encode(), id="control-character"),
            pytest.param(b"\xff" + (NEUMANN_TEXT + "\n" + PETER_SIG).encode(), id="invalid-utf8"),
            pytest.param(
                (NEUMANN_TEXT + "\n" + "— Bad Name " + PETER_SIG.split(" ")[2]).encode(), id="name-with-space"
            ),
            pytest.param((NEUMANN_TEXT + "\n" + PETER_SIG + "Unexpected line.\n").encode(), id="trailing-line"),
        ],
    )
    def test_go_malformed_notes_are_rejected(self, note: bytes) -> None:
        with pytest.raises(NoteError):
            open_note(note, [NoteVerifier.from_vkey(PETER_VKEY)])


class TestKeyStrings:
    @pytest.mark.parametrize("name", sorted(GO_KEY_PAIRS))
    def test_go_generated_skey_yields_its_vkey(self, name: str) -> None:
        skey, vkey = GO_KEY_PAIRS[name]
        signer = NoteSigner.from_skey(skey)
        assert (signer.name, signer.vkey(), signer.skey()) == (name, vkey, skey)
        assert NoteVerifier.from_vkey(vkey).key_hash == signer.key_hash

    def test_generated_keys_round_trip(self) -> None:
        signer = NoteSigner.generate("avgate.example/ledger")
        again = NoteSigner.from_skey(signer.skey())
        assert again.vkey() == signer.vkey()
        assert NoteVerifier.from_vkey(signer.vkey()) == signer.verifier()
        body = b"hello\n"
        assert open_note(again.sign(body), [NoteVerifier.from_vkey(signer.vkey())])[0] == body

    def test_key_hash_follows_the_c2sp_formula(self) -> None:
        key = Ed25519PrivateKey.generate()
        signer = NoteSigner("k.example", key)
        raw = signer.verifier().vkey().split("+", 2)[2]
        expected = hashlib.sha256(b"k.example\n" + base64.b64decode(raw)).digest()[:4]
        assert signer.key_hash == int.from_bytes(expected, "big")
        assert key_hash("k.example", base64.b64decode(raw)) == signer.key_hash

    def test_every_mangled_vkey_is_rejected(self) -> None:
        mangled = _manglings(PETER_VKEY)
        accepted = [k for k in mangled if _accepts(NoteVerifier.from_vkey, k)]
        assert accepted == []

    def test_every_mangled_skey_is_rejected(self) -> None:
        mangled = _manglings(PETER_SKEY)
        accepted = [k for k in mangled if _accepts(NoteSigner.from_skey, k)]
        assert accepted == []

    @pytest.mark.parametrize(
        "vkey",
        [
            pytest.param(
                "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==", id="wrong-key-length"
            ),
            pytest.param("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", id="unknown-algorithm"),
            pytest.param("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", id="space-in-name"),
            pytest.param("PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", id="short-hash"),
        ],
    )
    def test_bad_vkeys_are_rejected(self, vkey: str) -> None:
        with pytest.raises(NoteError):
            NoteVerifier.from_vkey(vkey)

    def test_skey_errors_do_not_echo_the_secret(self) -> None:
        bad = PETER_SKEY.replace("c74f20a3", "c74f20a4")
        with pytest.raises(NoteError) as err:
            NoteSigner.from_skey(bad)
        assert "AYEKFALV" not in str(err.value)

    @pytest.mark.parametrize("name", ["", "a+b", "a b", "a\tb", "a\u00a0b", "a\u3000b"], ids=repr)
    def test_invalid_key_names_are_refused(self, name: str) -> None:
        with pytest.raises(NoteError, match="invalid key name"):
            NoteSigner.generate(name)


def _manglings(key: str) -> list[str]:
    """Every proper substring and every single-character increment (as in Go's note_test.go)."""
    out = {key[i:j] for i in range(len(key) + 1) for j in range(i + 1, len(key) + 1) if (i, j) != (0, len(key))}
    out |= {key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :] for i in range(len(key))}
    out.discard(key)
    return sorted(out)


def _accepts(parse: object, key: str) -> bool:
    assert callable(parse)
    try:
        parse(key)
    except NoteError:
        return False
    return True


class TestSumdbCheckpoint:
    def test_sum_golang_org_checkpoint_verifies_and_parses(self) -> None:
        body, sigs = open_note(SUMDB_CHECKPOINT.encode(), [NoteVerifier.from_vkey(SUMDB_VKEY)])
        cp = Checkpoint.parse(body)
        assert (cp.origin, cp.size, cp.timestamp_ms, cp.extensions) == ("go.sum database tree", 6476701, None, ())
        assert base64.b64encode(cp.root_hash).decode() == "mb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk="
        assert cp.body() == body
        assert [(s.name, s.key_hash, s.verified) for s in sigs] == [("sum.golang.org", 0x033DE0AE, True)]

    def test_open_checkpoint_requires_key_named_like_origin(self) -> None:
        # sumdb's origin is not its key name; our ledger insists on the C2SP convention.
        with pytest.raises(NoteError, match="no verified signature by a key of that name"):
            open_checkpoint(SUMDB_CHECKPOINT.encode(), [NoteVerifier.from_vkey(SUMDB_VKEY)])


class TestCheckpointBody:
    def test_body_lays_out_origin_size_hash_and_timestamp(self, checkpoint: Checkpoint) -> None:
        assert checkpoint.body() == f"{ORIGIN}\n42\n{ROOT_B64}\ntimestamp 1700000000123\n".encode()

    def test_body_without_timestamp_is_the_three_mandatory_lines(self) -> None:
        assert Checkpoint(ORIGIN, 0, ROOT).body() == f"{ORIGIN}\n0\n{ROOT_B64}\n".encode()

    @pytest.mark.parametrize(
        "cp",
        [
            pytest.param(Checkpoint(ORIGIN, 0, ROOT), id="empty-tree"),
            pytest.param(Checkpoint(ORIGIN, 2**64 - 1, ROOT, timestamp_ms=0), id="max-size"),
            pytest.param(Checkpoint(ORIGIN, 7, ROOT, 5, ("other ext", "x")), id="timestamp-and-extensions"),
            pytest.param(Checkpoint(ORIGIN, 7, ROOT, None, ("other ext",)), id="extension-only"),
            pytest.param(Checkpoint("go.sum database tree", 7, ROOT), id="origin-with-spaces"),
        ],
    )
    def test_parse_inverts_body(self, cp: Checkpoint) -> None:
        assert Checkpoint.parse(cp.body()) == cp
        assert Checkpoint.parse(cp.body()).body() == cp.body()

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(f"{ORIGIN}\n42\n".encode(), id="missing-root-line"),
            pytest.param(f"{ORIGIN}\n42\n{ROOT_B64}".encode(), id="no-final-newline"),
            pytest.param(f"\n42\n{ROOT_B64}\n".encode(), id="empty-origin"),
            pytest.param(f" {ORIGIN}\n42\n{ROOT_B64}\n".encode(), id="origin-leading-space"),
            pytest.param(f"{ORIGIN}\n042\n{ROOT_B64}\n".encode(), id="leading-zero"),
            pytest.param(f"{ORIGIN}\n00\n{ROOT_B64}\n".encode(), id="double-zero"),
            pytest.param(f"{ORIGIN}\n+42\n{ROOT_B64}\n".encode(), id="plus-sign"),
            pytest.param(f"{ORIGIN}\n-1\n{ROOT_B64}\n".encode(), id="negative"),
            pytest.param(f"{ORIGIN}\n 42\n{ROOT_B64}\n".encode(), id="space-before-size"),
            pytest.param(f"{ORIGIN}\n42 \n{ROOT_B64}\n".encode(), id="space-after-size"),
            pytest.param(f"{ORIGIN}\n4_2\n{ROOT_B64}\n".encode(), id="underscore"),
            pytest.param(f"{ORIGIN}\n\u0664\u0662\n{ROOT_B64}\n".encode(), id="non-ascii-digits"),
            pytest.param(f"{ORIGIN}\n{2**64}\n{ROOT_B64}\n".encode(), id="size-over-64-bits"),
            pytest.param(f"{ORIGIN}\n42\n{base64.b64encode(ROOT[:31]).decode()}\n".encode(), id="root-31-bytes"),
            pytest.param(f"{ORIGIN}\n42\n{base64.b64encode(ROOT + b'x').decode()}\n".encode(), id="root-33-bytes"),
            pytest.param(f"{ORIGIN}\n42\n{ROOT_B64.rstrip('=')}\n".encode(), id="root-unpadded"),
            pytest.param(f"{ORIGIN}\n42\n{ROOT_B64[:-2]}B=\n".encode(), id="root-non-canonical-bits"),
            pytest.param(f"{ORIGIN}\n42\nThisIsn'tBase64\n".encode(), id="root-not-base64"),
            pytest.param(f"{ORIGIN}\n42\n{ROOT_B64} \n".encode(), id="root-trailing-space"),
            pytest.param(
                base64.urlsafe_b64encode(b"\xff" * 32).join([f"{ORIGIN}\n42\n".encode(), b"\n"]), id="root-urlsafe"
            ),
            pytest.param(f"{ORIGIN}\r\n42\r\n{ROOT_B64}\r\n".encode(), id="crlf"),
            pytest.param(f"{ORIGIN}\n42\n{ROOT_B64}\n\n".encode(), id="trailing-blank-line"),
            pytest.param(f"{ORIGIN}\n42\n{ROOT_B64}\next\n\n".encode(), id="empty-extension-line"),
            pytest.param(f"{ORIGIN}\n42\n{ROOT_B64}\ntimestamp 012\n".encode(), id="timestamp-leading-zero"),
            pytest.param(f"{ORIGIN}\n42\n{ROOT_B64}\ntimestamp\n".encode(), id="timestamp-without-value"),
            pytest.param(f"{ORIGIN}\n42\n{ROOT_B64}\ntimestamp  5\n".encode(), id="timestamp-double-space"),
            pytest.param(f"{ORIGIN}\n42\n{ROOT_B64}\ntimestamp 5\ntimestamp 6\n".encode(), id="timestamp-twice"),
            pytest.param(f"{ORIGIN}\n42\n{ROOT_B64}\next\ntimestamp 5\n".encode(), id="timestamp-not-first"),
            pytest.param(f"{ORIGIN}\n42\n{ROOT_B64}\nx\ty\n".encode(), id="tab"),
            pytest.param(f"{ORIGIN}\n42\n".encode() + b"\xc3\x28\n", id="invalid-utf8"),
        ],
    )
    def test_malformed_bodies_are_rejected(self, body: bytes) -> None:
        with pytest.raises(NoteError):
            Checkpoint.parse(body)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            pytest.param({"root_hash": ROOT[:31]}, "32 bytes", id="short-root"),
            pytest.param({"size": -1}, "tree size", id="negative-size"),
            pytest.param({"size": True}, "tree size", id="bool-size"),
            pytest.param({"origin": ""}, "origin", id="empty-origin"),
            pytest.param({"origin": "a\nb"}, "newline", id="origin-newline"),
            pytest.param({"timestamp_ms": 2**64}, "timestamp_ms", id="timestamp-overflow"),
            pytest.param({"extensions": ("timestamp 5",)}, "timestamp", id="timestamp-as-extension"),
            pytest.param({"extensions": ("",)}, "non-empty", id="empty-extension"),
            pytest.param({"extensions": ("a\rb",)}, "control character", id="cr-in-extension"),
        ],
    )
    def test_invalid_checkpoints_cannot_be_built(self, kwargs: dict[str, object], message: str) -> None:
        fields: dict[str, object] = {"origin": ORIGIN, "size": 1, "root_hash": ROOT, **kwargs}
        with pytest.raises(NoteError, match=message):
            Checkpoint(**fields)  # type: ignore[arg-type]


class TestSignedCheckpointRoundTrip:
    def test_sign_then_open_returns_the_checkpoint(
        self, checkpoint: Checkpoint, signed: bytes, log_signer: NoteSigner
    ) -> None:
        assert signed.startswith(checkpoint.body() + b"\n\xe2\x80\x94 " + ORIGIN.encode() + b" ")
        assert open_checkpoint(signed, [log_signer.verifier()]) == checkpoint

    def test_verifier_from_published_vkey_opens_it(
        self, checkpoint: Checkpoint, signed: bytes, log_signer: NoteSigner
    ) -> None:
        assert open_checkpoint(signed, [NoteVerifier.from_vkey(log_signer.vkey())]) == checkpoint

    def test_witness_cosignature_is_kept_and_verified_when_known(
        self, checkpoint: Checkpoint, log_signer: NoteSigner, witness_signer: NoteSigner
    ) -> None:
        note = sign_checkpoint(checkpoint, log_signer, witness_signer)
        assert open_checkpoint(note, [log_signer.verifier()]) == checkpoint
        _, sigs = open_note(note, [log_signer.verifier(), witness_signer.verifier()])
        assert [(s.name, s.verified) for s in sigs] == [(ORIGIN, True), (witness_signer.name, True)]

    def test_old_and_new_log_keys_both_open_a_rotation_note(self, checkpoint: Checkpoint) -> None:
        old, new = NoteSigner.generate(ORIGIN), NoteSigner.generate(ORIGIN)
        note = sign_checkpoint(checkpoint, new, old)
        assert open_checkpoint(note, [old.verifier()]) == checkpoint
        assert open_checkpoint(note, [new.verifier()]) == checkpoint

    def test_log_key_must_be_named_like_the_origin(self, checkpoint: Checkpoint, witness_signer: NoteSigner) -> None:
        with pytest.raises(NoteError, match="origin"):
            sign_checkpoint(checkpoint, witness_signer)

    def test_only_a_witness_signature_does_not_make_a_valid_checkpoint(
        self, checkpoint: Checkpoint, log_signer: NoteSigner, witness_signer: NoteSigner
    ) -> None:
        note = sign_checkpoint(checkpoint, log_signer, witness_signer)
        with pytest.raises(NoteError, match="no verified signature by a key of that name"):
            open_checkpoint(note, [witness_signer.verifier()])

    def test_two_different_keys_with_the_same_name_and_hash_are_ambiguous(
        self, signed: bytes, log_signer: NoteSigner
    ) -> None:
        colliding = NoteSigner.generate(ORIGIN).verifier()
        colliding.key_hash = log_signer.key_hash  # a 32-bit collision, forced
        with pytest.raises(NoteError, match="ambiguous key"):
            open_note(signed, [log_signer.verifier(), colliding])

    def test_signature_object_renders_its_line(self, signed: bytes, log_signer: NoteSigner) -> None:
        _, sigs = open_note(signed, [log_signer.verifier()])
        assert sigs == [Signature(ORIGIN, log_signer.key_hash, sigs[0].signature, True)]
        assert signed.endswith(sigs[0].line().encode())


class TestRejectedSignedCheckpoints:
    def test_tampered_body(self, signed: bytes, log_signer: NoteSigner) -> None:
        with pytest.raises(InvalidSignatureError):
            open_checkpoint(signed.replace(b"\n42\n", b"\n43\n"), [log_signer.verifier()])

    def test_tampered_signature(self, signed: bytes, log_signer: NoteSigner) -> None:
        head, name, raw = _sig_line_parts(signed)
        forged = raw[:10] + bytes([raw[10] ^ 1]) + raw[11:]
        with pytest.raises(InvalidSignatureError):
            open_checkpoint(_with_sig(head, name, forged), [log_signer.verifier()])

    def test_truncated_signature(self, signed: bytes, log_signer: NoteSigner) -> None:
        head, name, raw = _sig_line_parts(signed)
        with pytest.raises(InvalidSignatureError):
            open_checkpoint(_with_sig(head, name, raw[:-3]), [log_signer.verifier()])

    def test_wrong_key_name(self, signed: bytes, log_signer: NoteSigner) -> None:
        head, _, raw = _sig_line_parts(signed)
        with pytest.raises(UnverifiedNoteError):
            open_checkpoint(_with_sig(head, "evil.example/ledger", raw), [log_signer.verifier()])

    def test_wrong_key_hash(self, signed: bytes, log_signer: NoteSigner) -> None:
        head, name, raw = _sig_line_parts(signed)
        with pytest.raises(UnverifiedNoteError):
            open_checkpoint(_with_sig(head, name, bytes([raw[0] ^ 0x80]) + raw[1:]), [log_signer.verifier()])

    def test_same_name_different_key(self, signed: bytes) -> None:
        impostor = NoteSigner.generate(ORIGIN).verifier()
        with pytest.raises(UnverifiedNoteError):
            open_checkpoint(signed, [impostor])

    def test_signature_from_unknown_key_only(self, checkpoint: Checkpoint, log_signer: NoteSigner) -> None:
        stranger = NoteSigner.generate(ORIGIN)
        with pytest.raises(UnverifiedNoteError, match="no signature by a known key"):
            open_checkpoint(sign_checkpoint(checkpoint, stranger), [log_signer.verifier()])

    @pytest.mark.parametrize(
        "mutate",
        [
            pytest.param(lambda n: n.replace(b"\n\n", b"\n"), id="missing-blank-line"),
            pytest.param(lambda n: n.replace(b"\n\n", b"\n \n"), id="blank-line-with-space"),
            pytest.param(
                lambda n: n.replace("\n\u2014 ".encode(), "\n\u2014  ".encode()), id="double-space-after-dash"
            ),
            pytest.param(lambda n: n.replace("\u2014 ".encode(), b"- "), id="hyphen-instead-of-em-dash"),
            pytest.param(lambda n: n[:-1] + b" \n", id="trailing-space-after-signature"),
            pytest.param(lambda n: n.replace(b"=\n", b"\n") if n.endswith(b"=\n") else n[:-2] + b"\n", id="bad-b64"),
            pytest.param(lambda n: n[:-1], id="signature-without-newline"),
            pytest.param(lambda n: n + b"\n", id="trailing-empty-line"),
            pytest.param(lambda n: n.replace(b"\n", b"\r\n"), id="crlf"),
            pytest.param(lambda n: n + b"extra\n", id="garbage-after-signatures"),
            pytest.param(lambda n: b"\x00" + n, id="nul"),
            pytest.param(lambda n: n.replace(b"\n42\n", b"\n4\xff\n"), id="invalid-utf8"),
        ],
    )
    def test_malformed_note(self, signed: bytes, log_signer: NoteSigner, mutate: object) -> None:
        assert callable(mutate)
        mutated = mutate(signed)
        assert mutated != signed
        with pytest.raises(NoteError):
            open_checkpoint(mutated, [log_signer.verifier()])

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(f"{ORIGIN}\n042\n{ROOT_B64}\n".encode(), id="non-canonical-size"),
            pytest.param(f"{ORIGIN}\n42\n{base64.b64encode(ROOT[:31]).decode()}\n".encode(), id="root-31-bytes"),
            pytest.param(f"{ORIGIN}\n42\n{ROOT_B64}\n\n\n".encode(), id="trailing-blank-lines"),
            pytest.param(f"{ORIGIN}\n42\n".encode(), id="two-lines"),
        ],
    )
    def test_validly_signed_malformed_checkpoint(self, body: bytes, log_signer: NoteSigner) -> None:
        note = sign_note(body, [log_signer])
        open_note(note, [log_signer.verifier()])  # the signature itself is fine
        with pytest.raises(NoteError):
            open_checkpoint(note, [log_signer.verifier()])


class TestNoteLimits:
    def test_body_over_one_mib_is_rejected(self, log_signer: NoteSigner) -> None:
        body = b"x" * MAX_BODY_BYTES + b"\n"
        sig = log_signer.signature_line(body).encode()
        with pytest.raises(NoteError, match="more than"):
            open_note(body + b"\n" + sig, [log_signer.verifier()])
        with pytest.raises(NoteError, match="more than"):
            sign_note(body, [log_signer])

    def test_body_of_exactly_one_mib_is_accepted(self, log_signer: NoteSigner) -> None:
        body = b"x" * (MAX_BODY_BYTES - 1) + b"\n"
        assert open_note(log_signer.sign(body), [log_signer.verifier()])[0] == body

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(b"no newline", id="no-final-newline"),
            pytest.param(b"", id="empty"),
            pytest.param(b"a\r\n", id="cr"),
            pytest.param(b"\xff\n", id="invalid-utf8"),
        ],
    )
    def test_signer_refuses_bodies_that_could_not_be_opened(self, body: bytes, log_signer: NoteSigner) -> None:
        with pytest.raises(NoteError):
            log_signer.sign(body)

    def test_signer_needs_at_least_one_key(self) -> None:
        with pytest.raises(NoteError, match="at least one"):
            sign_note(b"x\n", [])

    def test_sixteen_signatures_are_accepted(self) -> None:
        signers = [NoteSigner.generate(f"w{i}.example") for i in range(16)]
        note = sign_note(b"body\n", signers)
        _, sigs = open_note(note, [s.verifier() for s in signers])
        assert len(sigs) == 16 and all(s.verified for s in sigs)
