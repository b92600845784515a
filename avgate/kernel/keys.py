"""Ed25519 signing keys for principal tokens: loading, generation, key ids.

Each process signs with its own private key (AVGATE_SIGNING_KEY_FILE) and
trusts the public keys in AVGATE_TRUSTED_KEYS_DIR, one `<issuer>.pub` PEM
file per issuer (several keys per issuer may be concatenated in one file,
which is how rotation keeps old tokens valid). Generating keys is a local
stand-in: the production profile refuses it.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from avgate.kernel.keyring import replace_secret_file

_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----\s*", re.S)


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable id of a public key: hex of the first 8 bytes of SHA-256(raw key)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """A process's own private key with its issuer name and key id."""

    issuer: str
    private_key: Ed25519PrivateKey

    @functools.cached_property
    def kid(self) -> str:
        return key_id(self.private_key.public_key())


def load_private_key(path: pathlib.Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_trusted_keys(directory: pathlib.Path) -> dict[str, dict[str, Ed25519PublicKey]]:
    """Reads `<issuer>.pub` files into {issuer: {kid: public key}}."""
    trusted: dict[str, dict[str, Ed25519PublicKey]] = {}
    if not directory.is_dir():
        return trusted
    for path in sorted(directory.glob("*.pub")):
        keys: dict[str, Ed25519PublicKey] = {}
        for block in _PEM_BLOCK.findall(path.read_bytes()):
            key = serialization.load_pem_public_key(block)
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"{path} holds a key that is not Ed25519")
            keys[key_id(key)] = key
        trusted[path.stem] = keys
    return trusted


def generate_key_pair(directory: pathlib.Path, issuer: str) -> pathlib.Path:
    """Creates `<issuer>.key` (0600) and `<issuer>.pub` in directory unless present."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / f"{issuer}.key"
    public_path = directory / f"{issuer}.pub"
    if private_path.exists():
        return private_path
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    replace_secret_file(private_path, pem)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path
