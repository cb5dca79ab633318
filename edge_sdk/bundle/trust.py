"""The trust gate every bundle open goes through: signature and rollback checks on the manifest's bytes.

With a trust policy (``EDGE_SDK_TRUSTED_KEYS``, or one given in Python) a bundle is refused before anything
else of it is parsed, hashed or loaded unless its ``manifest.sig`` holds a valid signature of the exact
``manifest.json`` bytes by a trusted key; then its ``version`` must not be lower than one already accepted
for its ``bundle_id`` (:mod:`edge_sdk.bundle.rollback`). The files themselves are then covered by the
manifest's sha256 list, which the signature protects. Without a policy nothing changes: unsigned bundles open.

The signature and rollback modules (``cryptography``, ``filelock``) are imported only when a policy is in
force, so a device that does not check signatures does not pay for loading them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Union

from edge_sdk.bundle.layout import SIGNATURE
from edge_sdk.bundle.manifest import Manifest
from edge_sdk.errors import BundleError

if TYPE_CHECKING:
    from edge_sdk.bundle.signing import TrustPolicy

TRUSTED_KEYS_VARIABLE = "EDGE_SDK_TRUSTED_KEYS"
ROLLBACK_MODES = ("record", "check", "off")

# What an open is told about trust: a policy; None, the environment's (EDGE_SDK_TRUSTED_KEYS; no checks when it
# is unset); False, no checks at all (tools that only show or sign a bundle, never run it).
Trust = Union["TrustPolicy", None, Literal[False]]


def trust_from_environment() -> TrustPolicy | None:
    """The policy ``EDGE_SDK_TRUSTED_KEYS`` configures, or None when it is unset or empty."""
    if not os.environ.get(TRUSTED_KEYS_VARIABLE):
        return None
    from edge_sdk.bundle.signing import TrustPolicy

    return TrustPolicy.from_environment()


def resolve_trust(trust: Trust) -> TrustPolicy | None:
    """The policy an open applies (see :data:`Trust`)."""
    if trust is False:
        return None
    if trust is None:
        return trust_from_environment()
    from edge_sdk.bundle.signing import TrustPolicy

    if not isinstance(trust, TrustPolicy):
        raise TypeError(f"trust must be a TrustPolicy, None (from the environment) or False, got {trust!r}")
    return trust


def read_trusted_manifest(manifest_path: Path, trust: Trust = None) -> tuple[bytes, Manifest]:
    """Read and parse ``manifest_path``; under a trust policy, first check its signature, then its version.
    Returns the exact bytes and the manifest parsed from them.

    The bytes are read once: the ones whose signature is checked are the ones parsed.
    """
    bundle = str(manifest_path.parent)
    try:
        data = manifest_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {str(manifest_path)!r}: {exc.strerror or exc}") from exc
    policy = resolve_trust(trust)
    if policy is not None:
        from edge_sdk.bundle.signing import check_manifest_signature

        signature_path = manifest_path.with_name(SIGNATURE)
        try:
            signature = signature_path.read_bytes() if signature_path.is_file() else None
        except OSError as exc:
            raise BundleError(f"cannot read {str(signature_path)!r}: {exc.strerror or exc}") from exc
        check_manifest_signature(data, signature, bundle, policy)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{str(manifest_path)!r} is not UTF-8 text ({exc}); the bundle is damaged, rebuild it or "
                          "copy it again") from None
    manifest = Manifest.from_json(text, source=str(manifest_path))
    if policy is not None and policy.rollback != "off":
        from edge_sdk.bundle.rollback import check_rollback

        check_rollback(manifest.bundle_id, manifest.version, bundle, record=policy.rollback == "record")
    return data, manifest
