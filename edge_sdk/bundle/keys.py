"""Ed25519 key pairs for signing bundles: generating them, reading the private key that signs and the public
keys a device trusts, and a key's id.

Keys are PEM files: the private key PKCS8, unencrypted, mode 0600 (``edge-sdk.key``); the public key
SubjectPublicKeyInfo (``edge-sdk.pub``), the one a device trusts. A key's id is the first 16 hex digits of the
sha256 of its raw 32-byte public key. The cryptography is ``cryptography``'s. Device-safe (no host library).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_sdk.bundle.atomic import atomic_path
from edge_sdk.errors import ConfigError

log = logging.getLogger(__name__)

PRIVATE_KEY_FILE = "edge-sdk.key"
PUBLIC_KEY_FILE = "edge-sdk.pub"
_KEY_ID_LENGTH = 16
# Keys are a few hundred bytes; a larger file is something else (a model named by mistake), refused before it
# is read into memory.
_MAX_KEY_BYTES = 64 * 1024


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key's id: the first 16 hex digits of the sha256 of its raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:_KEY_ID_LENGTH]


def _public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ConfigError(f"{what} {str(path)!r} is not a file; give the path of a .pub/.key PEM file")
        if size > _MAX_KEY_BYTES:
            raise ConfigError(f"{what} {str(path)!r} is {size:,} bytes, far too large for a key; is it the right "
                              "file? Keys are the small PEM files `edge-sdk keys generate` writes")
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist; create keys with `edge-sdk keys generate --out DIR`")\
            from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class GeneratedKeys:
    """Where :func:`generate_keys` wrote a key pair, and the pair's id."""

    key_id: str
    private_key: Path
    public_key: Path


def generate_keys(folder: str | os.PathLike, overwrite: bool = False) -> GeneratedKeys:
    """Write a new Ed25519 pair as ``folder/edge-sdk.key`` (private, mode 0600) and ``folder/edge-sdk.pub``.

    Existing keys are kept unless ``overwrite``: a replaced private key cannot sign for the devices that
    trust the old one. Each file is written atomically; the private key is never readable by others, not even
    while it is being written.
    """
    folder = Path(folder)
    private_path, public_path = folder / PRIVATE_KEY_FILE, folder / PUBLIC_KEY_FILE
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {str(folder)!r} is a file; give a folder to write the keys into")
    existing = [str(path) for path in (private_path, public_path) if path.exists()]
    if existing and not overwrite:
        raise ConfigError(f"{' and '.join(existing)} already exist; keep them (devices may trust them), choose "
                          "another --out, or pass --overwrite to replace them")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with ExitStack() as stack:
            # Leaving the stack renames the public key into place, then the private key: both or (on an error
            # before the renames) neither.
            private_temporary = stack.enter_context(atomic_path(private_path))
            public_temporary = stack.enter_context(atomic_path(public_path))
            os.chmod(private_temporary, 0o600)  # before a byte of the key is in it
            with open(private_temporary, "wb") as handle:
                handle.write(private_pem)
            public_temporary.write_bytes(_public_pem(key.public_key()))
    except OSError as exc:
        raise ConfigError(f"cannot write keys into {str(folder)!r}: {exc.strerror or exc}") from exc
    return GeneratedKeys(key_id=key_id(key.public_key()), private_key=private_path, public_key=public_path)


class SigningKey:
    """A private Ed25519 key loaded from its PEM file, ready to sign manifests."""

    def __init__(self, private_key: Ed25519PrivateKey, path: Path | None = None) -> None:
        self._key = private_key
        self.path = path
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SigningKey:
        """Read a private key written by :func:`generate_keys` (PKCS8 PEM, unencrypted)."""
        path = Path(path)
        data = _read_key_file(path, "signing key")
        where = str(path)
        if b"PUBLIC KEY-----" in data:
            raise ConfigError(f"{where!r} is a public key; signing needs the private key ({PRIVATE_KEY_FILE}, "
                              "the file beside it that `edge-sdk keys generate` wrote)")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError as exc:  # cryptography's way of saying the key is encrypted
            raise ConfigError(f"{where!r} is an encrypted private key; edge-sdk reads unencrypted PKCS8 keys "
                              "(protect the file with mode 0600 instead, or use `edge-sdk keys generate`)") from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"{where!r} is not a PEM private key ({exc}); give the {PRIVATE_KEY_FILE} file that "
                              "`edge-sdk keys generate` wrote") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{where!r} holds a {type(key).__name__.lstrip('_')}, not an Ed25519 key; edge-sdk "
                              "signs with Ed25519 keys from `edge-sdk keys generate`")
        if os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077:
            log.warning("signing key %s is readable by other users; restrict it with `chmod 600 %s`", where, where)
        return cls(key, path)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    """Read a trusted public key (SubjectPublicKeyInfo PEM, as ``edge-sdk keys generate`` writes it)."""
    path = Path(path)
    data = _read_key_file(path, "trusted key")
    where = str(path)
    if b"PRIVATE KEY-----" in data:
        raise ConfigError(f"trusted key {where!r} is a private key; trust the public key ({PUBLIC_KEY_FILE}) and "
                          "keep the private key off devices")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"trusted key {where!r} is not a PEM public key ({exc}); give the {PUBLIC_KEY_FILE} file "
                          "that `edge-sdk keys generate` wrote") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"trusted key {where!r} is a {type(key).__name__.lstrip('_')}, not an Ed25519 key; "
                          "edge-sdk checks Ed25519 signatures made with keys from `edge-sdk keys generate`")
    return key
