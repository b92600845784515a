"""The filesystem blob store on a real directory: all-or-nothing writes, reads
from an offset, destroy, and names that cannot leave the root."""

from __future__ import annotations

import os
import pathlib
import stat
from collections.abc import AsyncIterator

import pytest

from services.reporting.evidence.blobs import BlobExists, BlobNotFound, FilesystemBlobStore

NAME = "0123456789abcdef0123456789abcdef"


async def stream(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def failing_after(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk
    raise RuntimeError("the client went away")


async def read_all(store: FilesystemBlobStore, name: str, offset: int = 0) -> bytes:
    return b"".join([c async for c in await store.open(name, offset)])


def files_under(root: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.fixture
def store(tmp_path: pathlib.Path) -> FilesystemBlobStore:
    return FilesystemBlobStore(tmp_path / "evidence", read_size=1000)


class TestWriting:
    async def test_a_written_object_reads_back_whole_and_from_any_offset(self, store: FilesystemBlobStore) -> None:
        data = os.urandom(5000)
        assert await store.write(NAME, stream(data[:1234], data[1234:])) == 5000
        assert await store.exists(NAME)
        assert await read_all(store, NAME) == data
        for offset in (0, 1, 999, 1000, 4999, 5000):
            assert await read_all(store, NAME, offset) == data[offset:]

    async def test_a_failed_stream_leaves_nothing_behind(
        self, store: FilesystemBlobStore, tmp_path: pathlib.Path
    ) -> None:
        with pytest.raises(RuntimeError, match="went away"):
            await store.write(NAME, failing_after(b"partial"))
        assert not await store.exists(NAME)
        assert files_under(tmp_path) == []

    async def test_an_object_is_never_overwritten(self, store: FilesystemBlobStore) -> None:
        await store.write(NAME, stream(b"first"))
        with pytest.raises(BlobExists):
            await store.write(NAME, stream(b"second"))
        assert await read_all(store, NAME) == b"first"

    async def test_objects_are_readable_by_the_owner_only(self, store: FilesystemBlobStore) -> None:
        await store.write(NAME, stream(b"x"))
        mode = stat.S_IMODE(store.path(NAME).stat().st_mode)
        assert mode == 0o600


class TestReadingAndDestroying:
    async def test_a_missing_object_is_blob_not_found(self, store: FilesystemBlobStore) -> None:
        with pytest.raises(BlobNotFound):
            await store.open(NAME)

    async def test_destroy_removes_the_object_and_may_repeat(self, store: FilesystemBlobStore) -> None:
        await store.write(NAME, stream(b"evidence"))
        await store.destroy(NAME)
        assert not await store.exists(NAME)
        assert not store.path(NAME).exists()
        await store.destroy(NAME)


class TestNames:
    @pytest.mark.parametrize("name", ["../escape", "a/b", "", "UPPER-case", "short"], ids=str)
    def test_a_name_that_could_leave_the_root_is_refused(self, store: FilesystemBlobStore, name: str) -> None:
        with pytest.raises(ValueError, match="not a blob name"):
            store.path(name)
