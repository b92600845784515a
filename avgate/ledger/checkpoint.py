"""Signed tree heads as C2SP checkpoints: signed notes with Ed25519 keys.

The ledger publishes every tree head in the formats existing transparency
tooling already reads, so a regulator or witness can check our heads with
golang.org/x/mod/sumdb/note, github.com/transparency-dev/formats/log or any
other implementation of these two specifications:

* c2sp.org/signed-note — a *note* is a UTF-8 text (the **body**) ending in a
  newline, then a blank line, then one or more signature lines::

      — <key name> <base64(4-byte key hash || signature)>

  (U+2014 EM DASH, a space, the key name, a space, the signature, a newline).
  The whole note must be valid UTF-8 without ASCII control characters other
  than newline (so no CR, no tab). The signature covers the body bytes,
  including the body's final newline but not the separating blank line. The
  body is separated from the signatures by the *last* blank line in the note.

  Key names are non-empty and contain neither Unicode whitespace nor ``+``.
  For Ed25519 (signature type 0x01) the key hash is the first four bytes,
  read big-endian, of ``SHA-256(key name || 0x0A || 0x01 || 32-byte public
  key)``. Keys travel as strings in the sumdb/note format::

      vkey: <name>+<8 hex key hash>+<base64(0x01 || 32-byte public key)>
      skey: PRIVATE+KEY+<name>+<8 hex key hash>+<base64(0x01 || 32-byte seed)>

* c2sp.org/tlog-checkpoint — a *checkpoint* is a note whose body is::

      <origin>
      <tree size, ASCII decimal, no leading zeros>
      <base64 of the 32-byte RFC 6962 root hash>
      [extension lines, each non-empty]

  The ledger writes exactly one extension line, the signing time::

      timestamp <milliseconds since the Unix epoch, ASCII decimal>

  When present it is the first extension line (the fourth line of the
  body); at most one line may start with the word ``timestamp``. Other
  extension lines are kept, opaque, in :attr:`Checkpoint.extensions`, so that
  :meth:`Checkpoint.parse` followed by :meth:`Checkpoint.body` reproduces the
  signed bytes exactly.

Verification rules (:func:`open_note`):

* A signature is attributed to a known key only when both its key name and
  its key hash match a :class:`NoteVerifier`; anything else is an unknown
  signature, returned with ``verified=False`` and otherwise ignored (this is
  what lets witnesses cosign and keys rotate).
* Every signature by a known key must verify; one that does not rejects the
  whole note (:class:`InvalidSignatureError`).
* A note without at least one verified signature is rejected
  (:class:`UnverifiedNoteError`).
* Signature lines and key strings must use canonical base64 (the encoding a
  signer produces), so a signature cannot be re-spelled.
* A body larger than 1 MiB, or more than 100 signature lines, is rejected.

The log's own key is named after the log: C2SP says the key name in the log's
signature line SHOULD match the origin, and the ledger makes it a MUST.
:func:`sign_checkpoint` refuses a signer whose name is not the origin, and
:func:`open_checkpoint` accepts a checkpoint only if at least one *verified*
signature comes from a key named exactly like its origin; a cosignature from
a witness alone is not enough. (The Go checksum database, whose origin
``go.sum database tree`` differs from its key name ``sum.golang.org``, can
still be read with :func:`open_note` and :meth:`Checkpoint.parse`.)

Key hashes are exposed as ``int`` (an unsigned 32-bit value, as in Go) and
printed as 8 lowercase hex digits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import pathlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "ALG_ED25519",
    "MAX_BODY_BYTES",
    "MAX_SIGNATURES",
    "TIMESTAMP_EXTENSION",
    "Checkpoint",
    "InvalidSignatureError",
    "NoteError",
    "NoteSigner",
    "NoteVerifier",
    "Signature",
    "UnverifiedNoteError",
    "key_hash",
    "open_checkpoint",
    "open_note",
    "parse_unverified",
    "sign_checkpoint",
    "sign_note",
]

ALG_ED25519 = 0x01
"""Signature type identifier of Ed25519 in c2sp.org/signed-note."""

MAX_BODY_BYTES = 1 << 20
"""Largest note body (text before the blank line) accepted or signed."""

MAX_SIGNATURES = 100
"""Most signature lines a note may carry (the spec requires accepting 16)."""

TIMESTAMP_EXTENSION = "timestamp"
"""First word of the checkpoint extension line carrying the signing time."""

_MAX_SIGNATURE_LINE_BYTES = 1024
_MAX_NOTE_BYTES = MAX_BODY_BYTES + 1 + MAX_SIGNATURES * _MAX_SIGNATURE_LINE_BYTES
_UINT64_LIMIT = 1 << 64
_ROOT_HASH_BYTES = 32
_SIG_PREFIX = "\u2014 "  # EM DASH, SPACE
_SKEY_PREFIX = "PRIVATE+KEY+"

_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f]")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_HEX32 = re.compile(r"[0-9a-fA-F]{8}")
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class NoteError(ValueError):
    """A signed note, checkpoint or key string is malformed or does not verify."""


class UnverifiedNoteError(NoteError):
    """The note is well formed but no signature in it is by a known key."""

    def __init__(self, message: str, signatures: list[Signature]) -> None:
        super().__init__(message)
        self.signatures = signatures


class InvalidSignatureError(NoteError):
    """A signature by a known key (name and key hash match) failed to verify."""

    def __init__(self, name: str, key_hash: int) -> None:
        super().__init__(f"invalid signature for key {name}+{key_hash:08x}")
        self.name = name
        self.key_hash = key_hash


# ---------------------------------------------------------------------------
# helpers


def _is_valid_name(name: object) -> bool:
    """Key names: non-empty, no Unicode whitespace, no '+', no ASCII control characters."""
    if not isinstance(name, str) or not name or "+" in name:
        return False
    if any(c.isspace() or ord(c) < 0x20 for c in name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _is_valid_name(name):
        raise NoteError(f"invalid key name {name!r}: must be non-empty without whitespace, '+' or control characters")
    return name


def _b64decode_canonical(text: str, what: str) -> bytes:
    """Strict standard base64 (RFC 4648 §4): alphabet, padding, and canonical trailing bits."""
    if not _B64.fullmatch(text) or len(text) % 4:
        raise NoteError(f"{what} is not valid base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _check_text(data: bytes, what: str) -> str:
    """Signed-note text rules: valid UTF-8, no ASCII control characters except newline."""
    bad = _CONTROL.search(data)
    if bad is not None:
        raise NoteError(f"{what} contains control character 0x{bad.group()[0]:02x} at byte {bad.start()}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError(f"{what} is not valid UTF-8 (byte {exc.start})") from exc


def _as_bytes(data: object, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"{what} must be bytes, not {type(data).__name__}")


def _parse_uint64(text: str, what: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise NoteError(f"{what} {text!r} is not a canonical decimal (digits only, no sign, no leading zeros)")
    value = int(text)
    if value >= _UINT64_LIMIT:
        raise NoteError(f"{what} {text} does not fit in 64 bits")
    return value


def _check_uint64(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _UINT64_LIMIT:
        raise NoteError(f"{what} must be an integer in [0, 2**64), not {value!r}")
    return value


def _check_body(body: bytes) -> None:
    """What a signer requires of a note body, so that what it signs can be opened."""
    if len(body) > MAX_BODY_BYTES:
        raise NoteError(f"note body is {len(body)} bytes, more than the {MAX_BODY_BYTES} allowed")
    if not body.endswith(b"\n"):
        raise NoteError("note body must end in a newline")
    _check_text(body, "note body")


def key_hash(name: str, public_key: bytes) -> int:
    """The note key hash: SHA-256(name || 0x0A || encoded public key)[:4], big-endian.

    ``public_key`` is the encoded key: the signature type byte followed by the
    key (for Ed25519: 0x01 || 32 bytes).
    """
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ---------------------------------------------------------------------------
# keys


class NoteVerifier:
    """A known Ed25519 note key: a key name and a public key."""

    __slots__ = ("_encoded", "key_hash", "name", "public_key")

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        if not isinstance(public_key, Ed25519PublicKey):
            raise TypeError("public_key must be an Ed25519PublicKey")
        self.name: str = _check_name(name)
        self.public_key: Ed25519PublicKey = public_key
        self._encoded: bytes = bytes([ALG_ED25519]) + _raw_public(public_key)
        self.key_hash: int = key_hash(name, self._encoded)

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parses ``<name>+<8 hex key hash>+<base64(0x01 || public key)>``."""
        if not isinstance(vkey, str):
            raise TypeError("vkey must be a str")
        name, sep1, rest = vkey.partition("+")
        hash16, sep2, key64 = rest.partition("+")
        if not sep1 or not sep2 or not _HEX32.fullmatch(hash16) or not key64:
            raise NoteError(f"malformed verifier key {vkey!r}: want <name>+<8 hex digits>+<base64 key>")
        _check_name(name)
        encoded = _b64decode_canonical(key64, f"public key of verifier key {vkey!r}")
        if not encoded:
            raise NoteError(f"malformed verifier key {vkey!r}: empty key")
        if encoded[0] != ALG_ED25519:
            raise NoteError(f"verifier key {vkey!r} has unknown signature type 0x{encoded[0]:02x}")
        if len(encoded) != 1 + 32:
            raise NoteError(f"verifier key {vkey!r} holds {len(encoded) - 1} key bytes; Ed25519 needs 32")
        if int(hash16, 16) != key_hash(name, encoded):
            raise NoteError(f"verifier key {vkey!r}: key hash does not match name and key")
        return cls(name, Ed25519PublicKey.from_public_bytes(encoded[1:]))

    def vkey(self) -> str:
        return f"{self.name}+{self.key_hash:08x}+{_b64(self._encoded)}"

    def verify(self, body: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (without the 4-byte key hash) is this key's signature of ``body``."""
        if len(signature) != 64:
            return False
        try:
            self.public_key.verify(signature, body)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NoteVerifier):
            return NotImplemented
        return self.name == other.name and self._encoded == other._encoded

    def __hash__(self) -> int:
        return hash((self.name, self._encoded))

    def __repr__(self) -> str:
        return f"NoteVerifier({self.vkey()!r})"


class NoteSigner:
    """An Ed25519 note signing key with its key name (the log's origin, for the log's own key)."""

    __slots__ = ("_verifier", "name", "private_key")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("private_key must be an Ed25519PrivateKey")
        self.name: str = _check_name(name)
        self.private_key: Ed25519PrivateKey = private_key
        self._verifier = NoteVerifier(name, private_key.public_key())

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        """A new random key named ``name``."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_skey_file(cls, path: pathlib.Path) -> NoteSigner:
        """The signer in a key file holding one skey line (as `avgate ledger keygen` writes it)."""
        return cls.from_skey(path.read_text().strip())

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        """Parses ``PRIVATE+KEY+<name>+<8 hex key hash>+<base64(0x01 || 32-byte seed)>``.

        Error messages never repeat the key string: it is a secret.
        """
        if not isinstance(skey, str):
            raise TypeError("skey must be a str")
        if not skey.startswith(_SKEY_PREFIX):
            raise NoteError("malformed signer key: does not start with PRIVATE+KEY+")
        name, sep1, rest = skey[len(_SKEY_PREFIX) :].partition("+")
        hash16, sep2, key64 = rest.partition("+")
        if not sep1 or not sep2 or not _HEX32.fullmatch(hash16) or not key64:
            raise NoteError("malformed signer key: want PRIVATE+KEY+<name>+<8 hex digits>+<base64 key>")
        _check_name(name)
        encoded = _b64decode_canonical(key64, "key data of signer key")
        if not encoded:
            raise NoteError("malformed signer key: empty key")
        if encoded[0] != ALG_ED25519:
            raise NoteError(f"signer key has unknown signature type 0x{encoded[0]:02x}")
        if len(encoded) != 1 + 32:
            raise NoteError(f"signer key holds {len(encoded) - 1} seed bytes; Ed25519 needs 32")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(encoded[1:]))
        if int(hash16, 16) != signer.key_hash:
            raise NoteError(f"signer key for {name!r}: key hash does not match name and key")
        return signer

    @property
    def key_hash(self) -> int:
        return self._verifier.key_hash

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._verifier.public_key

    def verifier(self) -> NoteVerifier:
        return self._verifier

    def vkey(self) -> str:
        return self._verifier.vkey()

    def skey(self) -> str:
        seed = self.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return f"{_SKEY_PREFIX}{self.name}+{self.key_hash:08x}+{_b64(bytes([ALG_ED25519]) + seed)}"

    def signature_line(self, body: bytes) -> str:
        """``— <name> <base64(key hash || Ed25519 signature of body)>\\n`` (body is not checked)."""
        sig = self.key_hash.to_bytes(4, "big") + self.private_key.sign(body)
        return f"{_SIG_PREFIX}{self.name} {_b64(sig)}\n"

    def sign(self, body: bytes) -> bytes:
        """The signed note: ``body``, a blank line and this key's signature line."""
        return sign_note(body, [self])

    def __repr__(self) -> str:
        return f"NoteSigner({self.name!r}, key_hash={self.key_hash:08x})"


# ---------------------------------------------------------------------------
# notes


@dataclass(frozen=True)
class Signature:
    """One signature line of a note. ``signature`` excludes the 4-byte key hash."""

    name: str
    key_hash: int
    signature: bytes
    verified: bool

    def line(self) -> str:
        """The signature line as it appears in a note, newline included."""
        return f"{_SIG_PREFIX}{self.name} {_b64(self.key_hash.to_bytes(4, 'big') + self.signature)}\n"


def sign_note(body: bytes, signers: Iterable[NoteSigner]) -> bytes:
    """Signs ``body`` with every signer, in order, and returns the signed note."""
    body = _as_bytes(body, "note body")
    _check_body(body)
    lines: list[str] = []
    seen: set[tuple[str, int]] = set()
    for signer in signers:
        ident = (signer.name, signer.key_hash)
        if ident in seen:
            raise NoteError(f"key {signer.name}+{signer.key_hash:08x} given twice")
        seen.add(ident)
        lines.append(signer.signature_line(body))
    if not lines:
        raise NoteError("a signed note needs at least one signer")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"more than {MAX_SIGNATURES} signatures")
    return body + b"\n" + "".join(lines).encode("utf-8")


def _parse_signature_line(line: str, index: int) -> tuple[str, int, bytes]:
    where = f"signature line {index + 1}"
    if not line.startswith(_SIG_PREFIX):
        raise NoteError(f"malformed {where}: does not start with an em dash (U+2014) and a space")
    name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
    if not sep or not b64:
        raise NoteError(f"malformed {where}: want '\u2014 <key name> <base64 signature>'")
    if not _is_valid_name(name):
        raise NoteError(f"malformed {where}: invalid key name {name!r}")
    raw = _b64decode_canonical(b64, where)
    if len(raw) < 5:
        raise NoteError(f"malformed {where}: signature too short")
    return name, int.from_bytes(raw[:4], "big"), raw[4:]


def open_note(note: bytes, verifiers: Iterable[NoteVerifier]) -> tuple[bytes, list[Signature]]:
    """Parses a signed note and verifies its signatures by the known keys.

    Returns the body (the signed bytes, final newline included) and the
    note's signatures in order, exact duplicates dropped, each marked
    verified or not. Signatures by unknown keys are returned unverified.
    Raises :class:`NoteError` if the note is malformed,
    :class:`InvalidSignatureError` if a known key's signature does not verify
    and :class:`UnverifiedNoteError` if no known key signed it.
    """
    note = _as_bytes(note, "note")
    if len(note) > _MAX_NOTE_BYTES:
        raise NoteError(f"note is {len(note)} bytes, more than the {_MAX_NOTE_BYTES} allowed")
    _check_text(note, "note")

    split = note.rfind(b"\n\n")
    if split < 0:
        raise NoteError("note has no blank line between body and signatures")
    body, block = note[: split + 1], note[split + 2 :]
    if len(body) > MAX_BODY_BYTES:
        raise NoteError(f"note body is {len(body)} bytes, more than the {MAX_BODY_BYTES} allowed")
    if not block:
        raise NoteError("note has no signature lines")
    if not block.endswith(b"\n"):
        raise NoteError("note's last signature line does not end in a newline")
    lines = block[:-1].decode("utf-8").split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has {len(lines)} signature lines, more than the {MAX_SIGNATURES} allowed")

    known: dict[tuple[str, int], list[NoteVerifier]] = {}
    for verifier in verifiers:
        if not isinstance(verifier, NoteVerifier):
            raise TypeError(f"verifiers must be NoteVerifier, not {type(verifier).__name__}")
        candidates = known.setdefault((verifier.name, verifier.key_hash), [])
        if verifier not in candidates:
            candidates.append(verifier)

    signatures: list[Signature] = []
    seen: set[tuple[str, int, bytes]] = set()
    for index, line in enumerate(lines):
        name, khash, sig = _parse_signature_line(line, index)
        candidates = known.get((name, khash), [])
        if len(candidates) > 1:
            raise NoteError(f"ambiguous key {name}+{khash:08x}: several known keys share this name and key hash")
        verified = False
        if candidates:
            if not candidates[0].verify(body, sig):
                raise InvalidSignatureError(name, khash)
            verified = True
        if (name, khash, sig) in seen:
            continue
        seen.add((name, khash, sig))
        signatures.append(Signature(name, khash, sig, verified))

    if not any(s.verified for s in signatures):
        names = ", ".join(f"{s.name}+{s.key_hash:08x}" for s in signatures)
        raise UnverifiedNoteError(f"note has no signature by a known key (signed by: {names})", signatures)
    return body, signatures


# ---------------------------------------------------------------------------
# checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """A C2SP checkpoint body: origin, tree size, RFC 6962 root hash, extensions.

    ``timestamp_ms`` is the signing time in milliseconds since the Unix epoch,
    carried in the first extension line as ``timestamp <ms>``; ``extensions``
    holds any other extension lines, without their newlines.
    """

    origin: str
    size: int
    root_hash: bytes
    timestamp_ms: int | None = None
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        origin = self.origin
        if not isinstance(origin, str) or not origin:
            raise NoteError("checkpoint origin must be a non-empty string")
        if origin != origin.strip():
            raise NoteError(f"checkpoint origin {origin!r} has leading or trailing whitespace")
        _check_line(origin, "checkpoint origin")
        _check_uint64(self.size, "tree size")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != _ROOT_HASH_BYTES:
            got = len(self.root_hash) if isinstance(self.root_hash, bytes) else type(self.root_hash).__name__
            raise NoteError(f"root hash must be {_ROOT_HASH_BYTES} bytes, got {got}")
        if self.timestamp_ms is not None:
            _check_uint64(self.timestamp_ms, "timestamp_ms")
        if not isinstance(self.extensions, tuple):
            raise NoteError("checkpoint extensions must be a tuple of strings")
        for ext in self.extensions:
            if not isinstance(ext, str) or not ext:
                raise NoteError("checkpoint extension lines must be non-empty strings")
            _check_line(ext, "checkpoint extension line")
            if _is_timestamp_line(ext):
                raise NoteError("the timestamp extension is set with timestamp_ms, not as an extension line")

    def body(self) -> bytes:
        """The note body to sign: one line each for origin, size, root hash, then extensions."""
        lines = [self.origin, str(self.size), _b64(self.root_hash)]
        if self.timestamp_ms is not None:
            lines.append(f"{TIMESTAMP_EXTENSION} {self.timestamp_ms}")
        lines.extend(self.extensions)
        return ("\n".join(lines) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, body: bytes) -> Checkpoint:
        """Parses a checkpoint body strictly; ``parse(b).body() == b`` for every accepted ``b``."""
        body = _as_bytes(body, "checkpoint body")
        if len(body) > MAX_BODY_BYTES:
            raise NoteError(f"checkpoint body is {len(body)} bytes, more than the {MAX_BODY_BYTES} allowed")
        text = _check_text(body, "checkpoint body")
        if not text.endswith("\n"):
            raise NoteError("checkpoint body does not end in a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError(f"checkpoint body has {len(lines)} line(s); it needs origin, tree size and root hash")
        origin, size_text, hash_text, *rest = lines
        if not origin:
            raise NoteError("checkpoint origin line is empty")
        size = _parse_uint64(size_text, "tree size")
        root_hash = _b64decode_canonical(hash_text, "root hash")
        if len(root_hash) != _ROOT_HASH_BYTES:
            raise NoteError(f"root hash is {len(root_hash)} bytes; RFC 6962 SHA-256 roots are {_ROOT_HASH_BYTES}")
        if any(not line for line in rest):
            raise NoteError("checkpoint has an empty extension line")
        timestamp_ms: int | None = None
        if rest and _is_timestamp_line(rest[0]):
            value = rest[0][len(TIMESTAMP_EXTENSION) + 1 :]
            timestamp_ms = _parse_uint64(value, "timestamp")
            rest = rest[1:]
        if any(_is_timestamp_line(line) for line in rest):
            raise NoteError("the timestamp line must be the first extension line and appear once")
        checkpoint = cls(origin, size, root_hash, timestamp_ms, tuple(rest))
        if checkpoint.body() != body:  # pragma: no cover - guaranteed by the checks above
            raise NoteError("checkpoint body is not in canonical form")
        return checkpoint


def _is_timestamp_line(line: str) -> bool:
    return line == TIMESTAMP_EXTENSION or line.startswith(TIMESTAMP_EXTENSION + " ")


def _check_line(value: str, what: str) -> None:
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NoteError(f"{what} is not encodable as UTF-8") from exc
    if b"\n" in raw:
        raise NoteError(f"{what} contains a newline")
    _check_text(raw, what)


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner, *cosigners: NoteSigner) -> bytes:
    """The checkpoint as a signed note, signed by the log key ``signer`` (named like the origin).

    ``cosigners`` (e.g. the previous key during a rotation) add further
    signature lines after the log's.
    """
    if signer.name != checkpoint.origin:
        raise NoteError(f"log key is named {signer.name!r} but the checkpoint origin is {checkpoint.origin!r}")
    return sign_note(checkpoint.body(), [signer, *cosigners])


def parse_unverified(note: bytes) -> Checkpoint:
    """The checkpoint in a signed note, signatures NOT checked (to learn which size to
    ask for, or to report on a head that does not verify). Raises NoteError when the
    note or its body is malformed."""
    split = note.rfind(b"\n\n")
    if split < 0:
        raise NoteError("note has no blank line between body and signatures")
    return Checkpoint.parse(note[: split + 1])


def open_checkpoint(note: bytes, verifiers: Iterable[NoteVerifier]) -> Checkpoint:
    """Verifies a signed checkpoint (see :func:`open_note`) and parses its body.

    Also requires that a verified signature is by a key named exactly like the
    checkpoint's origin: the log itself must have signed it.
    """
    body, signatures = open_note(note, verifiers)
    checkpoint = Checkpoint.parse(body)
    if not any(s.verified and s.name == checkpoint.origin for s in signatures):
        verified = ", ".join(f"{s.name}+{s.key_hash:08x}" for s in signatures if s.verified)
        raise NoteError(
            f"checkpoint for origin {checkpoint.origin!r} has no verified signature by a key of that name"
            f" (verified: {verified})"
        )
    return checkpoint
