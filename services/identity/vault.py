"""The personal-data vault: field encryption, blind indexes, masking (PIPL).

Pure functions over bytes and strings; callers store what they return. Three
parts:

**Field encryption, one data key per subject.** Each subject (an account's
verified identity, a guardian) gets a random 256-bit data key (DEK).
`Vault.new_data_key` returns it with its wrapped form: AES-256-GCM under the
current key-encryption key (KEK), the associated data binding the KEK id, the
subject's record id and the DEK's version, so a wrapped key moved to another
record does not open. The KEK file is avgate.kernel.keyring's format (one
"<key id> <base64 32 bytes>" a line, the last one current); a wrapped key
names its KEK id, so appending a new KEK leaves every older wrap readable, and
`Vault.rewrap` moves a wrap to the current KEK without touching field
ciphertexts (after which an old KEK can leave the file).

A field ciphertext is

    0x01 (format) | DEK version (u32, big-endian) | nonce (12) | AES-256-GCM ciphertext and tag

with associated data "avgate.identity.field.v1" NUL record id NUL field name
NUL DEK version, so a ciphertext copied to another field or another record
fails to decrypt (FieldDecryptionFailed) instead of showing the wrong value.

**Erasure is crypto-shredding.** To erase a subject's personal data (consent
withdrawn, deletion request), the caller deletes the stored wrapped DEK (and,
as hygiene, the field ciphertexts and blind indexes) in the same transaction
as the ledger entry recording the erasure. Without the wrapped DEK no copy of
the ciphertexts (replicas, backups, exports) can be decrypted, and the ledger
trail, which holds ids and masked values only, stays verifiable. A wrapped DEK
can outlive the row in a database backup; rotating the KEK (append a key,
`rewrap` every live DEK, then drop the old KEK from the file) finishes the
erasure there too. Callers never cache an unwrapped DataKey beyond a request.

**Blind indexes.** Equality lookups without decryption: HMAC-SHA256 under an
index key (its own key file, separate from the KEKs) over a domain-separated
message: "avgate.identity.blind-index.v1" NUL kind NUL scope NUL normalised
value. The scope is the tenant id, so the same ID number in two tenants gives
unrelated digests and a tenant's "one identity backs at most one account"
rule is a unique index on (tenant, kind, version, digest). A tenant that
explicitly opts into a cross-tenant check uses the scope CROSS_TENANT (a
value no tenant id can take). Each index is (version, digest), the version
being the index key's id. Rotating the index key:

1. append the new key to the index key file (it becomes current);
2. the re-index job, per record: decrypt the normalised value with the
   record's DEK and store `BlindIndexer.index_all(...)`, which has one
   digest for every key in the file (the new version alongside the old);
3. while the job runs, lookups match any of `BlindIndexer.index_all(...)`
   for the probe value, so records of either version are found;
4. when every record has the current version, drop the old rows and the old
   key from the file; `index` (current version only) is then enough.

**Masking.** `mask_*` return a Masked(masked, kind), the shape of
avgate.common.v1.MaskedValue. The rules follow common Chinese practice
(GB/T 35273 examples; banks and payment apps): a name keeps its first
character ("张*", "张**"; Latin names keep each word's initial: "J*** D**"),
a resident ID keeps its first 3 and last 4 characters ("110***********002X":
region and birth date hidden), a mobile number keeps its first 3 and last 4
digits ("+86 138****1234"), a credit code its first 2 (authority and
category) and last 4, a legacy organisation code its first 2 and last 2, an
organisation name its first 2 and last 2 characters.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from avgate.kernel.keyring import KEY_SIZE, KeyFile, check_key_id, parse_key_file
from avgate.kernel.personal_data import contains_personal_data

FIELD_FORMAT = 1
NONCE_SIZE = 12
_FIELD_HEADER = struct.Struct(">BI")
_FIELD_LABEL = b"avgate.identity.field.v1"
_WRAP_LABEL = b"avgate.identity.data-key.v1"
_INDEX_LABEL = b"avgate.identity.blind-index.v1"
CROSS_TENANT = "\x00cross-tenant"
"""The blind-index scope of a tenant that opted into a cross-tenant uniqueness check."""


class VaultError(Exception):
    """Something stored does not open. Messages never hold plaintext or keys."""


class FieldDecryptionFailed(VaultError):
    """A field ciphertext does not authenticate for this record, field and key."""


class UnknownKeyEncryptionKey(VaultError):
    """A wrapped data key names a KEK id the key file no longer holds."""


# --------------------------------------------------------------------------- data keys


@dataclass(frozen=True)
class WrappedDataKey:
    """What the caller stores per subject: the DEK wrapped under KEK `kek_id`."""

    kek_id: str
    version: int
    wrapped: bytes
    """nonce (12) | AES-256-GCM ciphertext of the 32-byte DEK and tag."""

    def __repr__(self) -> str:
        return f"WrappedDataKey(kek_id={self.kek_id!r}, version={self.version})"


class DataKey:
    """An unwrapped DEK of one record: encrypts and decrypts that record's fields.

    Lives for one request; never stored, logged or cached.
    """

    def __init__(self, record_id: str, version: int, key: bytes):
        if len(key) != KEY_SIZE:
            raise ValueError("a data key is 32 bytes")
        self.record_id = record_id
        self.version = version
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return f"DataKey(record_id={self.record_id!r}, version={self.version})"

    def _aad(self, field: str, version: int) -> bytes:
        return b"\x00".join((_FIELD_LABEL, self.record_id.encode(), field.encode(), str(version).encode()))

    def encrypt(self, field: str, plaintext: str) -> bytes:
        """The ciphertext of one field's value, bound to this record and `field`."""
        nonce = os.urandom(NONCE_SIZE)
        header = _FIELD_HEADER.pack(FIELD_FORMAT, self.version)
        return header + nonce + self._aead.encrypt(nonce, plaintext.encode(), self._aad(field, self.version))

    def decrypt(self, field: str, ciphertext: bytes) -> str:
        """The value of `field`; FieldDecryptionFailed if it was sealed for another record, field or key."""
        if len(ciphertext) < _FIELD_HEADER.size + NONCE_SIZE + 16:
            raise FieldDecryptionFailed(f"field {field!r}: the ciphertext is too short")
        fmt, version = _FIELD_HEADER.unpack_from(ciphertext)
        if fmt != FIELD_FORMAT:
            raise FieldDecryptionFailed(f"field {field!r}: unknown ciphertext format {fmt}")
        if version != self.version:
            raise FieldDecryptionFailed(f"field {field!r}: sealed under data key version {version}, not {self.version}")
        nonce = ciphertext[_FIELD_HEADER.size : _FIELD_HEADER.size + NONCE_SIZE]
        body = ciphertext[_FIELD_HEADER.size + NONCE_SIZE :]
        try:
            return self._aead.decrypt(nonce, body, self._aad(field, version)).decode()
        except InvalidTag as exc:
            raise FieldDecryptionFailed(f"field {field!r} does not decrypt for record {self.record_id!r}") from exc


def field_key_version(ciphertext: bytes) -> int:
    """The DEK version a field ciphertext names (to pick the wrapped key that opens it)."""
    if len(ciphertext) < _FIELD_HEADER.size:
        raise FieldDecryptionFailed("the ciphertext is too short")
    return int(_FIELD_HEADER.unpack_from(ciphertext)[1])


class Vault:
    """Wraps and unwraps per-record data keys under the configured KEKs."""

    def __init__(self, keks: KeyFile):
        self._keks = {kid: AESGCM(key) for kid, key in keks.keys.items()}
        self._current = keks.current

    @classmethod
    def from_key_file_text(cls, text: str) -> Vault:
        return cls(parse_key_file(text))

    @property
    def current_kek_id(self) -> str:
        return self._current

    @staticmethod
    def _aad(kek_id: str, record_id: str, version: int) -> bytes:
        return b"\x00".join((_WRAP_LABEL, kek_id.encode(), record_id.encode(), str(version).encode()))

    def new_data_key(self, record_id: str, version: int = 1) -> tuple[WrappedDataKey, DataKey]:
        """A fresh random DEK for `record_id`: store the first, use the second."""
        if version < 1:
            raise ValueError("data key versions start at 1")
        key = AESGCM.generate_key(bit_length=KEY_SIZE * 8)
        return self._wrap(record_id, version, key), DataKey(record_id, version, key)

    def _wrap(self, record_id: str, version: int, key: bytes) -> WrappedDataKey:
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._keks[self._current].encrypt(nonce, key, self._aad(self._current, record_id, version))
        return WrappedDataKey(self._current, version, nonce + sealed)

    def _unwrap(self, record_id: str, wrapped: WrappedDataKey) -> bytes:
        kek = self._keks.get(wrapped.kek_id)
        if kek is None:
            raise UnknownKeyEncryptionKey(f"no key-encryption key {wrapped.kek_id!r} in the key file")
        nonce, body = wrapped.wrapped[:NONCE_SIZE], wrapped.wrapped[NONCE_SIZE:]
        try:
            return kek.decrypt(nonce, body, self._aad(wrapped.kek_id, record_id, wrapped.version))
        except InvalidTag as exc:
            raise FieldDecryptionFailed(
                f"the data key does not unwrap under {wrapped.kek_id!r} for record {record_id!r}"
            ) from exc

    def open_data_key(self, record_id: str, wrapped: WrappedDataKey) -> DataKey:
        """The DEK of `record_id` from its stored wrap."""
        return DataKey(record_id, wrapped.version, self._unwrap(record_id, wrapped))

    def rewrap(self, record_id: str, wrapped: WrappedDataKey) -> WrappedDataKey:
        """The same DEK wrapped under the current KEK (KEK rotation; field ciphertexts stay as they are)."""
        if wrapped.kek_id == self._current:
            return wrapped
        return self._wrap(record_id, wrapped.version, self._unwrap(record_id, wrapped))


# --------------------------------------------------------------------------- blind indexes


@dataclass(frozen=True)
class BlindIndex:
    """A keyed hash of a normalised value: the index key's id and the 32-byte digest."""

    version: str
    digest: bytes

    def __repr__(self) -> str:
        return f"BlindIndex(version={self.version!r}, digest={self.digest.hex()[:12]}...)"


class IndexKind:
    """Domain-separation labels of the values that get blind indexes."""

    RESIDENT_ID = "resident_id"
    CREDIT_CODE = "credit_code"
    ORGANIZATION_CODE = "organization_code"
    MOBILE = "mobile"


class BlindIndexer:
    """Computes blind indexes under the index keys of a key file (the last one current)."""

    def __init__(self, keys: KeyFile):
        self._keys: Mapping[str, bytes] = dict(keys.keys)
        self._current = keys.current

    @classmethod
    def from_key_file_text(cls, text: str) -> BlindIndexer:
        return cls(parse_key_file(text))

    @property
    def current_version(self) -> str:
        return self._current

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def _digest(self, version: str, kind: str, scope: str, value: str) -> BlindIndex:
        if not kind or "\x00" in kind:
            raise ValueError("an index kind is a non-empty label without NUL")
        if not scope or ("\x00" in scope and scope != CROSS_TENANT):
            raise ValueError("an index scope is a tenant id or CROSS_TENANT")
        message = b"\x00".join((_INDEX_LABEL, kind.encode(), scope.encode(), value.encode()))
        return BlindIndex(version, hmac.new(self._keys[version], message, hashlib.sha256).digest())

    def index(self, kind: str, scope: str, value: str) -> BlindIndex:
        """The current-version index of a normalised value (`scope`: the tenant id, or CROSS_TENANT)."""
        return self._digest(self._current, kind, scope, value)

    def index_all(self, kind: str, scope: str, value: str) -> list[BlindIndex]:
        """The index under every key in the file, current last: what the re-index job stores
        and what a lookup during a rotation matches against."""
        return [self._digest(version, kind, scope, value) for version in self._keys]

    def index_version(self, version: str, kind: str, scope: str, value: str) -> BlindIndex:
        """The index under one named version (KeyError if the file no longer holds it)."""
        check_key_id(version)
        if version not in self._keys:
            raise KeyError(f"no index key {version!r} in the key file")
        return self._digest(version, kind, scope, value)


# --------------------------------------------------------------------------- masking


@dataclass(frozen=True)
class Masked:
    """A masked rendering and its kind: avgate.common.v1.MaskedValue's fields."""

    masked: str
    kind: str


_NAME_KEEP = frozenset("·•・\uff0e.-' ")


def _stars(text: str) -> str:
    return "".join(c if c in _NAME_KEEP else "*" for c in text)


def mask_name(name: str) -> Masked:
    """A person's name: the first character of a Han-style name ("张**"), each word's
    initial of a name written with spaces ("J*** D**"); separators such as "·" are kept."""
    name = unicodedata.normalize("NFC", name).strip()
    if " " in name:
        masked = " ".join(w[:1] + _stars(w[1:]) for w in name.split())
    elif len(name) <= 1:
        masked = "*"
    else:
        masked = name[0] + _stars(name[1:])
    return Masked(masked, "name")


def mask_organization_name(name: str) -> Masked:
    name = unicodedata.normalize("NFC", name).strip()
    short = len(name) <= 4
    masked = name[:1] + "*" * max(len(name) - 1, 1) if short else name[:2] + "*" * (len(name) - 4) + name[-2:]
    return Masked(masked, "organization_name")


def _keep_ends(value: str, head: int, tail: int) -> str:
    if len(value) <= head + tail:
        return "*" * len(value)
    return value[:head] + "*" * (len(value) - head - tail) + value[len(value) - tail :]


def mask_resident_id(number: str) -> Masked:
    """ "110***********002X": first 3 and last 4 characters of a normalised number."""
    return Masked(_keep_ends(number, 3, 4), "resident_id")


def mask_mobile(e164: str) -> Masked:
    """ "+86 138****1234" from a normalised "+86..." number."""
    national = e164[3:] if e164.startswith("+86") else e164
    return Masked("+86 " + _keep_ends(national, 3, 4), "mobile")


def mask_credit_code(code: str) -> Masked:
    """ "91************341L": authority and category, and the last 4 characters."""
    return Masked(_keep_ends(code, 2, 4), "credit_code")


def mask_organization_code(code: str) -> Masked:
    """ "60*****41": first 2 and last 2 characters of a normalised 9-character code."""
    return Masked(_keep_ends(code, 2, 2), "organization_code")


# --------------------------------------------------------------------------- guard


class PersonalDataInText(ValueError):
    """Text bound for a log, an error or the ledger holds personal data in clear."""


def assert_no_personal_data(text: str, what: str) -> None:
    """Raises PersonalDataInText (naming `what`, never the text) if `text` looks like it holds
    a resident ID number, a mobile number or a credit code (avgate.ledger.entry's detector)."""
    if contains_personal_data(text):
        raise PersonalDataInText(f"{what} holds what looks like an ID, credit code or mobile number")
