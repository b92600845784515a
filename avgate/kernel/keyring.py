"""Key files of symmetric keys: one "<key id> <base64 of 32 bytes>" a line, the last one current.

Shared by every service that keeps symmetric keys in configuration
(reporting's evidence key-encryption keys, identity's field-encryption and
blind-index keys). Blank lines and lines starting with '#' are ignored. To
rotate, append a new key and keep the old ones while anything made with them
remains. Errors name the line at fault, never the key.

Every file holding a secret (key files, the ledger's note signing key, the local
stack's development API keys) is written here, readable by its owner only.
"""

from __future__ import annotations

import base64
import binascii
import os
import pathlib
import re
import secrets
from dataclasses import dataclass

KEY_SIZE = 32
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY_ID_RULE = "1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'"


@dataclass(frozen=True)
class KeyFile:
    """The keys of a key file by id, in file order, and the id of the current (last) one."""

    keys: dict[str, bytes]
    current: str

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise ValueError(f"the current key {self.current!r} is not in the key file")
        for kid, key in self.keys.items():
            check_key_id(kid)
            if len(key) != KEY_SIZE:
                raise ValueError(f"key {kid!r} is not {KEY_SIZE} bytes")

    def __repr__(self) -> str:  # never print key material
        return f"KeyFile(ids={list(self.keys)}, current={self.current!r})"


def check_key_id(kid: str) -> str:
    if not KEY_ID.fullmatch(kid):
        raise ValueError(f"key id {kid!r}: {_KEY_ID_RULE}")
    return kid


def parse_key_file(text: str) -> KeyFile:
    """The keys of key-file text; ValueError names the line at fault (never the key)."""
    keys: dict[str, bytes] = {}
    current = None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"line {number}: expected '<key id> <base64 key>'")
        kid, encoded = parts
        if kid in keys:
            raise ValueError(f"line {number}: key id {kid!r} appears twice")
        try:
            keys[kid] = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"line {number}: the key is not base64") from exc
        current = kid
    if current is None:
        raise ValueError("the key file holds no key")
    return KeyFile(keys, current)


def new_key_line(kid: str) -> str:
    """A key-file line with a fresh random key."""
    check_key_id(kid)
    return f"{kid} {base64.b64encode(secrets.token_bytes(KEY_SIZE)).decode()}"


def create_key_file(path: pathlib.Path, kid: str, comment: str) -> bool:
    """Creates `path` (0600) holding one fresh key unless it exists; whether this call made it."""
    return create_secret_file(path, f"# {comment}\n{new_key_line(kid)}\n")


def create_secret_file(path: pathlib.Path, text: str) -> bool:
    """Writes `text` to a new file (0600) unless `path` exists; whether this call made it.

    For key material of any format (also a signer's key that is no key file of
    this module's). Safe when several processes of a local stack start
    together: the file is created exclusively, so exactly one of them writes it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return True


def replace_secret_file(path: pathlib.Path, data: str | bytes) -> None:
    """Writes `data` to `path` (0600) through a temporary file beside it, so no reader sees a partial file
    and the secret is never readable by others, not even for a moment."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a leftover keeps its own mode; a new file gets 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
