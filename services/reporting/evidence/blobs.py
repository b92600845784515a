"""Where sealed evidence objects live: a small interface and its filesystem
implementation.

The interface knows objects by name and bytes only: no paths, directories or
renames, so an object-storage implementation (a multipart upload completed at
the end of `write`, a ranged GET for `open`) fits it as well as a directory
does. What the bytes are (the sealed format of `evidence.crypto`) and what
the names are (random, never derived from the content, so storage reveals
nothing of it) is the caller's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterable
from typing import BinaryIO, Protocol

NAME = re.compile(r"[a-z0-9][a-z0-9-]{7,127}")
READ_SIZE = 1024 * 1024


class BlobNotFound(Exception):
    """No object by that name."""


class BlobExists(Exception):
    """An object by that name exists already (objects are never overwritten)."""


class BlobStore(Protocol):
    async def write(self, name: str, chunks: AsyncIterable[bytes]) -> int:
        """Stores the stream as object `name`, all or nothing; returns its size.

        The object exists only once the stream has ended without error; a
        stream that raises (or is cancelled) leaves nothing behind, and the
        error propagates. Raises BlobExists for a name taken already.
        """
        ...

    async def open(self, name: str, offset: int = 0) -> AsyncGenerator[bytes, None]:
        """The object's bytes from `offset` to its end, in chunks; BlobNotFound when absent.

        Close the iterator (`contextlib.aclosing`) when stopping early.
        """
        ...

    async def destroy(self, name: str) -> None:
        """Removes the object; nothing happens when it is gone already."""
        ...

    async def exists(self, name: str) -> bool: ...


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValueError(f"not a blob name: {name!r}")
    return name


class FilesystemBlobStore:
    """Objects as files under one directory (REPORTING_EVIDENCE_DIR).

    `<root>/<first two characters>/<name>`, written under `<root>/.partial/`
    and moved into place after an fsync, so a crash never leaves a partial
    object under a real name. Files are 0600, directories 0700. Blocking
    file calls run in worker threads, off the event loop.
    """

    def __init__(self, root: pathlib.Path, *, read_size: int = READ_SIZE):
        self._root = root
        self._partial = root / ".partial"
        self._read_size = read_size

    def path(self, name: str) -> pathlib.Path:
        check_name(name)
        return self._root / name[:2] / name

    async def write(self, name: str, chunks: AsyncIterable[bytes]) -> int:
        final = self.path(name)
        await asyncio.to_thread(self._partial.mkdir, mode=0o700, parents=True, exist_ok=True)
        temporary = self._partial / f"{name}.{uuid.uuid4().hex}"
        fh = await asyncio.to_thread(_create, temporary)
        written = 0
        try:
            async for chunk in chunks:
                await asyncio.to_thread(fh.write, chunk)
                written += len(chunk)
            await asyncio.to_thread(_sync_and_close, fh)
            await asyncio.to_thread(_move_into_place, temporary, final)
        except BaseException:
            # Cancellation too: a client that hangs up mid-upload leaves nothing.
            fh.close()
            temporary.unlink(missing_ok=True)
            raise
        return written

    async def open(self, name: str, offset: int = 0) -> AsyncGenerator[bytes, None]:
        if offset < 0:
            raise ValueError("offset must not be negative")
        path = self.path(name)
        try:
            fh = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(name) from exc
        return self._chunks(fh, offset)

    async def _chunks(self, fh: BinaryIO, offset: int) -> AsyncGenerator[bytes, None]:
        try:
            await asyncio.to_thread(fh.seek, offset)
            while chunk := await asyncio.to_thread(fh.read, self._read_size):
                yield chunk
        finally:
            fh.close()

    async def destroy(self, name: str) -> None:
        await asyncio.to_thread(self.path(name).unlink, missing_ok=True)

    async def exists(self, name: str) -> bool:
        return await asyncio.to_thread(self.path(name).is_file)


def _create(path: pathlib.Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


def _sync_and_close(fh: BinaryIO) -> None:
    with fh:
        fh.flush()
        os.fsync(fh.fileno())


def _move_into_place(temporary: pathlib.Path, final: pathlib.Path) -> None:
    final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if final.exists():
        raise BlobExists(final.name)
    os.replace(temporary, final)
    # The rename is durable once the directory entry is.
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
