"""The at-rest format of evidence: segmented AES-256-GCM under a random
per-object data key, the data key wrapped by a key-encryption key (KEK).

An object is a header and a run of segments (integers big-endian):

    header   "AVGEVID" | version 0x01 | segment size (u32) | nonce prefix (8 random bytes)
    segment  AES-256-GCM(data key, nonce = prefix || index (u32),
                         aad = header || index (u32) || final (u8)) of the next plaintext

Every segment but the last holds exactly `segment size` plaintext bytes; the
last holds 0 to `segment size` and is the only one sealed with final = 1 (an
empty object is one empty final segment). The index in the nonce and in the
associated data detects reordered or dropped segments, the final flag
detects a stream cut at a segment boundary or extended past its end, and the
header in the associated data detects an edited header. A reader holds one
segment at a time, so a multi-GB object never sits in memory, and it can
start at any segment (a resumed read).

The data key never leaves this process unwrapped. Wrapping is AES-256-GCM
under the current KEK with the object's name in the associated data, so a
wrapped key moved to another object does not open. Each wrapped key names
its KEK id, so rotating the KEK (a new last line in the key file) leaves
every older object readable as long as its KEK stays in the file. Destroying
the wrapped key destroys the object (crypto-shredding), wherever copies of
the ciphertext remain.
"""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncGenerator, AsyncIterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from avgate.kernel.keyring import KeyFile, new_key_line, parse_key_file

MAGIC = b"AVGEVID"
VERSION = 1
SEGMENT_SIZE = 1024 * 1024
TAG_SIZE = 16
KEY_SIZE = 32
HEADER = struct.Struct(">7sBI8s")
_SEGMENT_AAD = struct.Struct(">IB")
_NONCE_INDEX = struct.Struct(">I")
_MAX_SEGMENTS = 2**32
_WRAP_NONCE_SIZE = 12
_WRAP_LABEL = b"avgate.evidence.data-key.v1"


class CorruptObject(Exception):
    """Stored evidence does not authenticate: tampered with, truncated, reordered or not ours."""


class UnknownKeyEncryptionKey(Exception):
    """A wrapped data key names a KEK id the key file no longer holds."""


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_SIZE * 8)


@dataclass(frozen=True)
class Header:
    raw: bytes
    segment_size: int
    nonce_prefix: bytes

    @classmethod
    def parse(cls, raw: bytes) -> Header:
        if len(raw) != HEADER.size:
            raise CorruptObject("the object is shorter than its header")
        magic, version, segment_size, prefix = HEADER.unpack(raw)
        if magic != MAGIC or version != VERSION or not 0 < segment_size <= 64 * SEGMENT_SIZE:
            raise CorruptObject("not an evidence object of a known version")
        return cls(bytes(raw), segment_size, prefix)

    def segment_offset(self, index: int) -> int:
        """Where segment `index` starts in the object."""
        return HEADER.size + index * (self.segment_size + TAG_SIZE)

    def nonce(self, index: int) -> bytes:
        return self.nonce_prefix + _NONCE_INDEX.pack(index)

    def aad(self, index: int, final: bool) -> bytes:
        return self.raw + _SEGMENT_AAD.pack(index, 1 if final else 0)


def sealed_size(plaintext_size: int, segment_size: int = SEGMENT_SIZE) -> int:
    """The object size for a plaintext size: header, then a tag per segment (at least one)."""
    segments = max(1, -(-plaintext_size // segment_size))
    return HEADER.size + plaintext_size + segments * TAG_SIZE


class SegmentEncryptor:
    """Seals a plaintext stream: write `header`, then what `update` returns, then `finalize()`."""

    def __init__(self, data_key: bytes, *, segment_size: int = SEGMENT_SIZE, nonce_prefix: bytes | None = None):
        if len(data_key) != KEY_SIZE:
            raise ValueError("a data key is 32 bytes")
        prefix = nonce_prefix if nonce_prefix is not None else os.urandom(8)
        self._header = Header.parse(HEADER.pack(MAGIC, VERSION, segment_size, prefix))
        self._aead = AESGCM(data_key)
        self._buffer = bytearray()
        self._index = 0
        self._finished = False

    @property
    def header(self) -> bytes:
        return self._header.raw

    def update(self, data: bytes) -> list[bytes]:
        """The segments `data` completes. A full segment is held back until more
        bytes arrive: only the end of the stream tells which segment is the last."""
        if self._finished:
            raise ValueError("the stream is finalized")
        self._buffer += data
        size = self._header.segment_size
        sealed = []
        while len(self._buffer) > size:
            sealed.append(self._seal(bytes(self._buffer[:size]), final=False))
            del self._buffer[:size]
        return sealed

    def finalize(self) -> bytes:
        """The last segment (final = 1)."""
        if self._finished:
            raise ValueError("the stream is finalized")
        self._finished = True
        last = self._seal(bytes(self._buffer), final=True)
        self._buffer.clear()
        return last

    def _seal(self, plaintext: bytes, *, final: bool) -> bytes:
        if self._index >= _MAX_SEGMENTS:
            raise ValueError("the object is too large for its segment counter")
        index = self._index
        self._index += 1
        return self._aead.encrypt(self._header.nonce(index), plaintext, self._header.aad(index, final))


async def encrypt_stream(
    data_key: bytes, plaintext: AsyncIterable[bytes], *, segment_size: int = SEGMENT_SIZE
) -> AsyncGenerator[bytes, None]:
    """The sealed object of a plaintext stream: header, then segments as they fill."""
    encryptor = SegmentEncryptor(data_key, segment_size=segment_size)
    yield encryptor.header
    async for chunk in plaintext:
        for segment in encryptor.update(chunk):
            yield segment
    yield encryptor.finalize()


async def decrypt_segments(
    data_key: bytes, header: Header, ciphertext: AsyncIterable[bytes], first_index: int = 0
) -> AsyncGenerator[bytes, None]:
    """Plaintext segments from `first_index` to the end, each authenticated before it is yielded.

    `ciphertext` is the object from `header.segment_offset(first_index)` to
    its end. Raises CorruptObject at the first segment that does not
    authenticate, including a stream that ends early or runs on past the
    final segment.
    """
    aead = AESGCM(data_key)
    sealed = header.segment_size + TAG_SIZE
    buffer = bytearray()
    index = first_index

    def open_segment(data: bytes, final: bool) -> bytes:
        try:
            return aead.decrypt(header.nonce(index), data, header.aad(index, final))
        except InvalidTag as exc:
            where = "final segment" if final else "segment"
            raise CorruptObject(f"{where} {index} does not authenticate") from exc

    async for chunk in ciphertext:
        buffer += chunk
        # A full sealed segment with more bytes after it cannot be the final one.
        while len(buffer) > sealed:
            yield open_segment(bytes(buffer[:sealed]), final=False)
            del buffer[:sealed]
            index += 1
    if len(buffer) < TAG_SIZE:
        raise CorruptObject(f"the object ends inside segment {index}")
    yield open_segment(bytes(buffer), final=True)


# --------------------------------------------------------------------------- key-encryption keys


@dataclass(frozen=True)
class SealedKey:
    """A data key wrapped by the KEK `kek_id`."""

    kek_id: str
    wrapped: bytes


class KeyRing:
    """Key-encryption keys by id; the current one wraps new data keys, every one unwraps.

    Key file: avgate.kernel.keyring's format (one `<key id> <base64 of 32
    bytes>` a line, the last one current). To rotate, append a new key and
    keep the old ones while data keys wrapped by them remain.
    """

    def __init__(self, keys: Mapping[str, bytes], current: str):
        if current not in keys:
            raise ValueError(f"the current key {current!r} is not in the key ring")
        KeyFile(dict(keys), current)  # checks ids and key sizes
        self._keys = {kid: AESGCM(key) for kid, key in keys.items()}
        self._current = current

    @property
    def current_id(self) -> str:
        return self._current

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """A key ring from key-file text; ValueError names the line at fault (never the key)."""
        parsed = parse_key_file(text)
        return cls(parsed.keys, parsed.current)

    @staticmethod
    def new_key_line(kid: str) -> str:
        """A key-file line with a fresh random key."""
        return new_key_line(kid)

    def wrap(self, data_key: bytes, context: str) -> SealedKey:
        """`data_key` wrapped by the current KEK, bound to `context` (the object's name)."""
        nonce = os.urandom(_WRAP_NONCE_SIZE)
        kek = self._keys[self._current]
        return SealedKey(self._current, nonce + kek.encrypt(nonce, data_key, _wrap_aad(self._current, context)))

    def unwrap(self, sealed: SealedKey, context: str) -> bytes:
        kek = self._keys.get(sealed.kek_id)
        if kek is None:
            raise UnknownKeyEncryptionKey(f"no key-encryption key {sealed.kek_id!r} in the key file")
        nonce, body = sealed.wrapped[:_WRAP_NONCE_SIZE], sealed.wrapped[_WRAP_NONCE_SIZE:]
        try:
            return kek.decrypt(nonce, body, _wrap_aad(sealed.kek_id, context))
        except InvalidTag as exc:
            raise CorruptObject(f"the data key does not unwrap under {sealed.kek_id!r} for this object") from exc


def _wrap_aad(kek_id: str, context: str) -> bytes:
    return b"\x00".join((_WRAP_LABEL, kek_id.encode(), context.encode()))
