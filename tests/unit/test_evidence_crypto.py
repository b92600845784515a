"""The evidence at-rest format: segmented AES-256-GCM that opens only as written,
and key-encryption keys that rotate without stranding older objects."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Iterable

import pytest

from services.reporting.evidence.crypto import (
    HEADER,
    TAG_SIZE,
    CorruptObject,
    Header,
    KeyRing,
    SealedKey,
    UnknownKeyEncryptionKey,
    decrypt_segments,
    encrypt_stream,
    new_data_key,
    sealed_size,
)

SEGMENT = 64  # small segments so a few hundred bytes span many of them


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def seal(key: bytes, plaintext: bytes, *, chunk: int = 50, segment: int = SEGMENT) -> bytes:
    return b"".join([part async for part in encrypt_stream(key, chunks_of(plaintext, chunk), segment_size=segment)])


async def open_from(key: bytes, sealed: bytes, first_index: int = 0, *, chunk: int = 37) -> bytes:
    header = Header.parse(sealed[: HEADER.size])
    body = sealed[header.segment_offset(first_index) :]
    return b"".join([part async for part in decrypt_segments(key, header, chunks_of(body, chunk), first_index)])


def segments_of(sealed: bytes, segment: int = SEGMENT) -> list[bytes]:
    body = sealed[HEADER.size :]
    size = segment + TAG_SIZE
    return [body[i : i + size] for i in range(0, len(body), size)]


SIZES = [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT, 5 * SEGMENT + 17]


class TestRoundTrip:
    @pytest.mark.parametrize("size", SIZES, ids=[f"{s}-bytes" for s in SIZES])
    async def test_what_is_sealed_opens_equal(self, size: int) -> None:
        key = new_data_key()
        plaintext = os.urandom(size)
        sealed = await seal(key, plaintext)
        assert len(sealed) == sealed_size(size, SEGMENT)
        assert await open_from(key, sealed) == plaintext

    @pytest.mark.parametrize("chunk", [1, 7, SEGMENT, 1000], ids=["1", "7", "segment", "1000"])
    async def test_how_the_plaintext_arrives_does_not_change_the_object_layout(self, chunk: int) -> None:
        key = new_data_key()
        plaintext = os.urandom(4 * SEGMENT + 3)
        sealed = await seal(key, plaintext, chunk=chunk)
        assert len(sealed) == sealed_size(len(plaintext), SEGMENT)
        assert await open_from(key, sealed) == plaintext

    async def test_reading_can_start_at_any_segment(self) -> None:
        key = new_data_key()
        plaintext = os.urandom(5 * SEGMENT + 9)
        sealed = await seal(key, plaintext)
        for index in range(6):
            assert await open_from(key, sealed, index) == plaintext[index * SEGMENT :]

    async def test_the_object_holds_no_plaintext(self) -> None:
        plaintext = b"evidence of prohibited content " * 40
        sealed = await seal(new_data_key(), plaintext)
        assert b"evidence" not in sealed
        assert b"prohibited" not in sealed

    async def test_the_same_bytes_seal_differently_each_time(self) -> None:
        key = new_data_key()
        plaintext = os.urandom(3 * SEGMENT)
        assert await seal(key, plaintext) != await seal(key, plaintext)


class TestTamperingIsDetected:
    @pytest.fixture
    async def sealed(self) -> tuple[bytes, bytes, bytes]:
        key = new_data_key()
        plaintext = os.urandom(4 * SEGMENT + 10)
        return key, plaintext, await seal(key, plaintext)

    async def test_a_flipped_bit_in_any_segment(self, sealed: tuple[bytes, bytes, bytes]) -> None:
        key, _, data = sealed
        for position in range(HEADER.size, len(data), SEGMENT // 2):
            tampered = bytearray(data)
            tampered[position] ^= 0x01
            with pytest.raises(CorruptObject):
                await open_from(key, bytes(tampered))

    async def test_an_edited_header(self, sealed: tuple[bytes, bytes, bytes]) -> None:
        key, _, data = sealed
        for position in range(HEADER.size):
            tampered = bytearray(data)
            tampered[position] ^= 0x01
            with pytest.raises(CorruptObject):
                await open_from(key, bytes(tampered))

    async def test_a_cut_at_a_segment_boundary(self, sealed: tuple[bytes, bytes, bytes]) -> None:
        key, _, data = sealed
        kept = segments_of(data)[:-1]
        with pytest.raises(CorruptObject, match="final segment"):
            await open_from(key, data[: HEADER.size] + b"".join(kept))

    async def test_a_cut_inside_a_segment(self, sealed: tuple[bytes, bytes, bytes]) -> None:
        key, _, data = sealed
        with pytest.raises(CorruptObject):
            await open_from(key, data[:-5])

    async def test_a_header_with_no_segment(self, sealed: tuple[bytes, bytes, bytes]) -> None:
        key, _, data = sealed
        with pytest.raises(CorruptObject):
            await open_from(key, data[: HEADER.size])

    async def test_reordered_segments(self, sealed: tuple[bytes, bytes, bytes]) -> None:
        key, _, data = sealed
        segments = segments_of(data)
        segments[1], segments[2] = segments[2], segments[1]
        with pytest.raises(CorruptObject, match="segment 1"):
            await open_from(key, data[: HEADER.size] + b"".join(segments))

    async def test_a_dropped_middle_segment(self, sealed: tuple[bytes, bytes, bytes]) -> None:
        key, _, data = sealed
        segments = segments_of(data)
        del segments[1]
        with pytest.raises(CorruptObject):
            await open_from(key, data[: HEADER.size] + b"".join(segments))

    async def test_bytes_appended_after_the_final_segment(self, sealed: tuple[bytes, bytes, bytes]) -> None:
        key, _, data = sealed
        with pytest.raises(CorruptObject):
            await open_from(key, data + os.urandom(SEGMENT + TAG_SIZE))

    async def test_a_segment_read_at_the_wrong_index(self, sealed: tuple[bytes, bytes, bytes]) -> None:
        key, _, data = sealed
        header = Header.parse(data[: HEADER.size])
        body = data[header.segment_offset(2) :]
        with pytest.raises(CorruptObject):
            b"".join([p async for p in decrypt_segments(key, header, chunks_of(body, 50), first_index=1)])

    async def test_another_data_key(self, sealed: tuple[bytes, bytes, bytes]) -> None:
        _, _, data = sealed
        with pytest.raises(CorruptObject):
            await open_from(new_data_key(), data)

    def test_a_header_that_is_not_ours(self) -> None:
        with pytest.raises(CorruptObject):
            Header.parse(b"\x00" * HEADER.size)
        with pytest.raises(CorruptObject):
            Header.parse(b"AVGEVID")


def key_file(lines: Iterable[str]) -> str:
    return "\n".join(lines) + "\n"


class TestKeyRing:
    def test_the_last_key_in_the_file_is_current(self) -> None:
        ring = KeyRing.parse(key_file(["# old first", KeyRing.new_key_line("k1"), "", KeyRing.new_key_line("k2")]))
        assert ring.key_ids == ("k1", "k2")
        assert ring.current_id == "k2"
        assert ring.wrap(new_data_key(), "obj").kek_id == "k2"

    def test_a_wrapped_key_unwraps_for_its_object(self) -> None:
        ring = KeyRing.parse(KeyRing.new_key_line("k1"))
        data_key = new_data_key()
        sealed = ring.wrap(data_key, "object-a")
        assert sealed.wrapped != data_key and data_key not in sealed.wrapped
        assert ring.unwrap(sealed, "object-a") == data_key

    def test_a_wrapped_key_moved_to_another_object_does_not_unwrap(self) -> None:
        ring = KeyRing.parse(KeyRing.new_key_line("k1"))
        sealed = ring.wrap(new_data_key(), "object-a")
        with pytest.raises(CorruptObject):
            ring.unwrap(sealed, "object-b")

    def test_after_rotation_keys_wrapped_by_the_old_kek_still_unwrap(self) -> None:
        old_line = KeyRing.new_key_line("2026-01")
        before = KeyRing.parse(old_line)
        data_key = new_data_key()
        sealed = before.wrap(data_key, "object-a")
        after = KeyRing.parse(key_file([old_line, KeyRing.new_key_line("2026-07")]))
        assert after.unwrap(sealed, "object-a") == data_key
        assert after.wrap(new_data_key(), "object-b").kek_id == "2026-07"

    def test_a_kek_removed_from_the_file_is_named(self) -> None:
        sealed = KeyRing.parse(KeyRing.new_key_line("gone")).wrap(new_data_key(), "object-a")
        with pytest.raises(UnknownKeyEncryptionKey, match="gone"):
            KeyRing.parse(KeyRing.new_key_line("other")).unwrap(sealed, "object-a")

    def test_a_tampered_wrapped_key_does_not_unwrap(self) -> None:
        ring = KeyRing.parse(KeyRing.new_key_line("k1"))
        sealed = ring.wrap(new_data_key(), "object-a")
        tampered = SealedKey(sealed.kek_id, sealed.wrapped[:-1] + bytes([sealed.wrapped[-1] ^ 1]))
        with pytest.raises(CorruptObject):
            ring.unwrap(tampered, "object-a")

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("", "no key"),
            ("# only a comment\n", "no key"),
            ("k1\n", "line 1"),
            ("k1 not-base64!\n", "line 1: the key is not base64"),
            (f"k1 {base64.b64encode(b'short').decode()}\n", "not 32 bytes"),
            (f"bad/id {base64.b64encode(os.urandom(32)).decode()}\n", "key id"),
            (
                KeyRing.new_key_line("k1") + "\n" + KeyRing.new_key_line("k1") + "\n",
                "line 2: key id 'k1' appears twice",
            ),
        ],
        ids=["empty", "comment-only", "no-key", "not-base64", "short-key", "bad-id", "duplicate-id"],
    )
    def test_a_bad_key_file_is_refused_by_line_without_echoing_keys(self, text: str, problem: str) -> None:
        with pytest.raises(ValueError, match=problem) as refused:
            KeyRing.parse(text)
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2:
                assert parts[1] not in str(refused.value)
