"""Detached signatures of a bundle's manifest, and the trusted keys a device checks them with (the keys
themselves: keys.py).

A bundle's ``manifest.json`` lists every other file with its sha256, so a signature over the manifest's exact
bytes covers the whole bundle. The signatures sit beside it in ``manifest.sig`` (not listed in the manifest,
which cannot hold its own signature)::

    {"format": 1, "algorithm": "ed25519", "signatures": [{"key_id": "…16 hex…", "signature": "…base64…"}]}

More than one signature may be there (key rotation: sign with the old key and the new one while devices
trust either). A key's id is the first 16 hex digits of the sha256 of its raw 32-byte public key.

Keys are PEM files: the private key PKCS8, unencrypted, mode 0600 (``edge-sdk.key``); the public key
SubjectPublicKeyInfo (``edge-sdk.pub``), the one a device trusts. The cryptography is ``cryptography``'s;
this module only reads, writes and compares. Device-safe (no host library).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_sdk.bundle.atomic import atomic_write_bytes
from edge_sdk.bundle.keys import PUBLIC_KEY_FILE, SigningKey, key_id, load_public_key
from edge_sdk.bundle.layout import MANIFEST, SIGNATURE
from edge_sdk.bundle.store import verify_bundle
from edge_sdk.bundle.trust import ROLLBACK_MODES, TRUSTED_KEYS_VARIABLE
from edge_sdk.errors import BundleError, BundleTrustError, ConfigError

SIGNATURE_FORMAT = 1
ALGORITHM = "ed25519"
_KEY_ID_LENGTH = 16  # as keys.key_id makes them
_SIGNATURE_BYTES = 64
# Signature files are a few hundred bytes; a larger file is something else, refused before it is read into memory.
_MAX_SIGNATURE_FILE_BYTES = 256 * 1024


# --- the signature file -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Signature:
    """One entry of ``manifest.sig``: who signed (the key id) and the signature bytes."""

    key_id: str
    value: bytes


class _Malformed(ValueError):
    """What is wrong with a signature file (the caller adds where and what to do)."""


def parse_signatures(data: bytes, source: str) -> list[Signature]:
    """The signatures in a ``manifest.sig``'s bytes; a BundleTrustError naming ``source`` if it is malformed."""
    try:
        return _parse(data, source)
    except _Malformed as exc:
        raise BundleTrustError(f"{source} is malformed: {exc}. The signature file is damaged or was not written by "
                               "edge-sdk; get the bundle again from its publisher, or sign it again with "
                               "`edge-sdk sign BUNDLE --key KEY`") from None


def _parse(data: bytes, source: str) -> list[Signature]:
    if len(data) > _MAX_SIGNATURE_FILE_BYTES:
        raise _Malformed(f"{len(data):,} bytes, far more than a signature file holds")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Malformed(f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise _Malformed(f"a JSON {type(document).__name__}, not an object")
    version = document.get("format")
    if isinstance(version, int) and not isinstance(version, bool) and version > SIGNATURE_FORMAT:
        raise BundleTrustError(f"{source} uses signature format {version}, but this edge-sdk reads format "
                               f"{SIGNATURE_FORMAT}; upgrade edge-sdk")
    if version != SIGNATURE_FORMAT:
        raise _Malformed(f"'format' is {version!r}, expected {SIGNATURE_FORMAT}")
    if document.get("algorithm") != ALGORITHM:
        raise _Malformed(f"'algorithm' is {document.get('algorithm')!r}, expected {ALGORITHM!r}")
    entries = document.get("signatures")
    if not isinstance(entries, list) or not entries:
        raise _Malformed("'signatures' is not a non-empty list")
    signatures = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise _Malformed(f"signature {number} is not an object")
        identifier, encoded = entry.get("key_id"), entry.get("signature")
        if not isinstance(identifier, str) or len(identifier) != _KEY_ID_LENGTH or \
                any(ch not in "0123456789abcdef" for ch in identifier):
            raise _Malformed(f"signature {number} has key_id {identifier!r}, not 16 lowercase hex digits")
        try:
            value = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else None
        except binascii.Error:
            value = None
        if value is None or len(value) != _SIGNATURE_BYTES:
            raise _Malformed(f"signature {number} (key {identifier}) is not {_SIGNATURE_BYTES} bytes in base64")
        signatures.append(Signature(identifier, value))
    return signatures


def signatures_to_bytes(signatures: Iterable[Signature]) -> bytes:
    """A ``manifest.sig``'s bytes for ``signatures``."""
    document = {"format": SIGNATURE_FORMAT, "algorithm": ALGORITHM,
                "signatures": [{"key_id": signature.key_id, "signature": base64.b64encode(signature.value).decode()}
                               for signature in signatures]}
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


# --- trust --------------------------------------------------------------------------------------------------


def signature_file(key: SigningKey, manifest_bytes: bytes, existing: bytes | None = None,
                   source: str = SIGNATURE) -> bytes:
    """The contents of a ``manifest.sig`` holding ``key``'s signature of ``manifest_bytes``: the signatures of
    ``existing`` (another file's bytes) are kept, except an older one by this same key, which this one replaces
    in place."""
    signatures = parse_signatures(existing, source) if existing is not None else []
    by_key = {signature.key_id: signature for signature in signatures}  # keeps the file's order
    by_key[key.key_id] = Signature(key.key_id, key.sign(manifest_bytes))
    return signatures_to_bytes(by_key.values())


@dataclass(frozen=True)
class TrustPolicy:
    """The public keys a device trusts, and what it does about rollbacks.

    ``rollback``: ``"record"`` (a device: refuse a version lower than the highest accepted for the bundle id,
    and record each newly accepted one), ``"check"`` (refuse, record nothing: a check that must not change the
    device's state) or ``"off"`` (signatures only).
    """

    keys: Mapping[str, Ed25519PublicKey]          # by key id
    origin: str = "the trust policy given in Python"  # where the keys came from, for messages
    rollback: str = "record"
    sources: Mapping[str, str] = field(default_factory=dict)  # key id -> the file it was read from

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigError(f"{self.origin} names no trusted key; give at least one public key")
        if self.rollback not in ROLLBACK_MODES:
            raise ConfigError(f"rollback must be one of {', '.join(ROLLBACK_MODES)}, got {self.rollback!r}")

    @classmethod
    def from_public_keys(cls, keys: Iterable[Ed25519PublicKey], origin: str = "the trust policy given in Python",
                         rollback: str = "record") -> TrustPolicy:
        """A policy trusting these keys (``cryptography`` Ed25519 public keys)."""
        by_id = {}
        for key in keys:
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError(f"{origin}: {type(key).__name__} is not an Ed25519 public key")
            by_id[key_id(key)] = key
        return cls(by_id, origin=origin, rollback=rollback)

    @classmethod
    def from_paths(cls, paths: Iterable[str | os.PathLike], origin: str | None = None,
                   rollback: str = "record") -> TrustPolicy:
        """A policy trusting the keys in these paths: each a ``.pub`` file, or a folder whose ``*.pub`` files
        are all trusted (other files in it are ignored)."""
        paths = [Path(path) for path in paths]
        origin = origin or "trusted keys " + ", ".join(map(str, paths))
        keys, sources = {}, {}
        for path in paths:
            for file in _public_key_files(path):
                key = load_public_key(file)
                keys[key_id(key)] = key
                sources.setdefault(key_id(key), str(file))
        return cls(keys, origin=origin, rollback=rollback, sources=sources)

    @classmethod
    def from_environment(cls, rollback: str = "record") -> TrustPolicy | None:
        """The policy ``EDGE_SDK_TRUSTED_KEYS`` configures (a ``.pub`` file or a folder of them), or None when
        it is unset or empty."""
        value = os.environ.get(TRUSTED_KEYS_VARIABLE)
        if not value:
            return None
        return cls.from_paths([value], origin=f"{TRUSTED_KEYS_VARIABLE}={value}", rollback=rollback)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self.keys)

    def with_rollback(self, rollback: str) -> TrustPolicy:
        return TrustPolicy(self.keys, origin=self.origin, rollback=rollback, sources=self.sources)


def _public_key_files(path: Path) -> list[Path]:
    if path.is_dir():
        try:
            files = sorted(child for child in path.iterdir() if child.suffix == ".pub" and child.is_file())
        except OSError as exc:
            raise ConfigError(f"cannot list the trusted keys folder {str(path)!r}: {exc.strerror or exc}") from exc
        if not files:
            raise ConfigError(f"the trusted keys folder {str(path)!r} holds no .pub file; copy the publisher's "
                              f"{PUBLIC_KEY_FILE} into it")
        return files
    if not path.exists():
        raise ConfigError(f"trusted key {str(path)!r} does not exist; give a {PUBLIC_KEY_FILE} file or a folder of "
                          ".pub files")
    return [path]


def check_manifest_signature(manifest_bytes: bytes, signature_bytes: bytes | None, source: str,
                             policy: TrustPolicy | None) -> list[str]:
    """Check that ``manifest_bytes`` carry a valid signature by a key ``policy`` trusts; raise BundleTrustError
    (naming ``source``, the key ids involved and what to do) if not. No policy: no check.

    ``signature_bytes`` are the ``manifest.sig`` contents (None: there is none). Returns the ids of the trusted
    keys whose signatures verified (one is enough; an entry by an untrusted key is ignored).
    """
    if policy is None:
        return []
    trusted = ", ".join(policy.key_ids)
    if signature_bytes is None:
        raise BundleTrustError(
            f"bundle {source!r} is not signed (it has no {SIGNATURE}) and this device only opens bundles signed by "
            f"a trusted key ({trusted}, from {policy.origin}); sign it with `edge-sdk sign BUNDLE --key KEY` or "
            f"build it with `--sign KEY`")
    signatures = parse_signatures(signature_bytes, f"{source}/{SIGNATURE}")
    by_trusted = [signature for signature in signatures if signature.key_id in policy.keys]
    if not by_trusted:
        signers = ", ".join(dict.fromkeys(signature.key_id for signature in signatures))
        raise BundleTrustError(
            f"bundle {source!r} is signed by key {signers}, which this device does not trust (trusted: {trusted}, "
            f"from {policy.origin}); sign it with a trusted key, or add the signer's public key to the trusted keys")
    verified = []
    for signature in by_trusted:
        try:
            policy.keys[signature.key_id].verify(signature.value, manifest_bytes)
        except InvalidSignature:
            continue
        verified.append(signature.key_id)
    if not verified:
        keys = ", ".join(signature.key_id for signature in by_trusted)
        raise BundleTrustError(
            f"bundle {source!r}: the signature by trusted key {keys} does not match {MANIFEST}, so the manifest was "
            "changed after it was signed; do not use this copy: get the bundle again from its publisher (or, if you "
            "changed it on purpose, sign it again)")
    return verified


# --- signing a bundle on disk -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SignResult:
    """What :func:`sign_bundle` did: the key it signed with and every key id now in ``manifest.sig``."""

    bundle: Path
    key_id: str
    signature_file: Path
    key_ids: list[str]


def read_signatures(root: str | os.PathLike) -> list[Signature] | None:
    """The signatures in a bundle's ``manifest.sig`` (None: unsigned), unverified: what ``inspect`` shows."""
    path = Path(root) / SIGNATURE
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc
    return parse_signatures(data, str(path))


def sign_bundle(root: str | os.PathLike, key: SigningKey | str | os.PathLike) -> SignResult:
    """Add ``key``'s signature of the bundle's ``manifest.json`` to its ``manifest.sig`` (written atomically).

    The files are checked against the manifest first: a signature vouches for the files the manifest lists, so
    a bundle damaged since the build is refused rather than signed. Signing again with the same key replaces
    its signature; other keys' signatures are kept (rotation: sign with the old and the new key).
    """
    root = Path(root)
    signing_key = key if isinstance(key, SigningKey) else SigningKey.load(key)
    verify_bundle(root, trust=False)
    manifest_path, signature_path = root / MANIFEST, root / SIGNATURE
    try:
        manifest_bytes = manifest_path.read_bytes()
        existing = signature_path.read_bytes() if signature_path.is_file() else None
    except OSError as exc:
        raise BundleError(f"cannot read the bundle {str(root)!r}: {exc.strerror or exc}") from exc
    if existing is not None:
        try:
            _parse(existing, str(signature_path))
        except _Malformed as exc:
            raise BundleTrustError(f"cannot add a signature: {signature_path} is malformed ({exc}); delete it, then "
                                   "sign again with every key that should sign the bundle") from None
    contents = signature_file(signing_key, manifest_bytes, existing, source=str(signature_path))
    try:
        atomic_write_bytes(signature_path, contents)
    except OSError as exc:
        raise BundleError(f"cannot write {str(signature_path)!r}: {exc.strerror or exc}") from exc
    key_ids = [signature.key_id for signature in parse_signatures(contents, str(signature_path))]
    return SignResult(bundle=root, key_id=signing_key.key_id, signature_file=signature_path, key_ids=key_ids)


@dataclass(frozen=True)
class SignatureStatus:
    """A bundle's signatures as ``verify`` and ``inspect`` report them."""

    key_ids: list[str]       # the keys whose signatures manifest.sig holds (empty: unsigned)
    verified_by: list[str]   # the trusted keys whose signatures verified (empty when no policy was given)


def signature_status(root: str | os.PathLike, policy: TrustPolicy | None = None) -> SignatureStatus:
    """Which keys signed the bundle at ``root`` and, under ``policy``, which trusted ones verified (raises
    BundleTrustError as an open would when none did)."""
    root = Path(root)
    signatures = read_signatures(root)
    if signatures is None:
        check_manifest_signature(b"", None, str(root), policy)  # refuses when a policy wants a signature
        return SignatureStatus([], [])
    verified = []
    if policy is not None:
        try:
            manifest_bytes = (root / MANIFEST).read_bytes()
            signature_bytes = (root / SIGNATURE).read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read the bundle {str(root)!r}: {exc.strerror or exc}") from exc
        verified = check_manifest_signature(manifest_bytes, signature_bytes, str(root), policy)
    return SignatureStatus(list(dict.fromkeys(signature.key_id for signature in signatures)), verified)
