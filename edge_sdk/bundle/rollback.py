"""Rollback protection: the highest version of each bundle id this device accepted, and refusal of lower ones.

An attacker who cannot forge a signature can still offer an *older* signed bundle (one with a known flaw).
So a device that checks signatures records, per bundle id, the highest ``version`` it accepted from a signed,
trusted manifest, and refuses a lower one. Only signed manifests count: an unsigned version number is
anyone's to write.

The record is ``accepted-versions.json`` in the device state folder (``state_dir()``)::

    {"format": 1, "bundles": {"minilm-topics-seq-cls": {"version": 3}}}

Updates are read-compare-write under an OS file lock (two processes opening bundles at once cannot lose
an update) and the file is replaced atomically. A damaged record is an error, not an empty one: starting
afresh silently would let the rollback through, so the user decides (restore it, or delete it to reset).
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

from filelock import FileLock, Timeout

from edge_sdk.bundle.atomic import atomic_write_text
from edge_sdk.bundle.state_dir import STATE_DIR_VARIABLE, state_dir
from edge_sdk.errors import BundleError, BundleTrustError, StorageFullError

ACCEPTED_VERSIONS = "accepted-versions.json"
_FORMAT = 1
_LOCK_TIMEOUT_S = 60.0
_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def accepted_versions_path() -> Path:
    return state_dir() / ACCEPTED_VERSIONS


def _damaged(path: Path, problem: str) -> BundleTrustError:
    return BundleTrustError(
        f"the device's record of accepted bundle versions, {str(path)!r}, is damaged ({problem}); rollback "
        "protection cannot be checked, so no signed bundle is opened. Restore the file from a backup, or delete it "
        "to start the record afresh (the device then accepts any signed version of each bundle once more)")


def read_accepted_versions(path: Path | None = None) -> dict[str, int]:
    """Bundle id -> the highest version accepted so far (empty when nothing was recorded yet)."""
    path = path or accepted_versions_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise _damaged(path, f"unreadable: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _damaged(path, f"not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("bundles"), dict):
        raise _damaged(path, "no 'bundles' object")
    if document.get("format") != _FORMAT:
        raise _damaged(path, f"format {document.get('format')!r}, this edge-sdk writes format {_FORMAT}")
    versions = {}
    for bundle_id, entry in document["bundles"].items():
        version = entry.get("version") if isinstance(entry, dict) else None
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise _damaged(path, f"bundle {bundle_id!r} has no integer version")
        versions[bundle_id] = version
    return versions


def _write(path: Path, versions: dict[str, int]) -> None:
    document = {"format": _FORMAT, "bundles": {bundle_id: {"version": version}
                                               for bundle_id, version in sorted(versions.items())}}
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")


def _refuse(bundle: str, bundle_id: str, version: int, accepted: int, path: Path) -> BundleTrustError:
    return BundleTrustError(
        f"bundle {bundle!r} ({bundle_id!r}) is version {version}, but this device already accepted version "
        f"{accepted}: refusing the rollback to an older release. Install version {accepted} or later; if the "
        f"downgrade is intended, remove {bundle_id!r} from {str(path)!r}")


def check_rollback(bundle_id: str, version: int, bundle: str, record: bool = True) -> None:
    """Refuse (BundleTrustError naming both versions) a ``version`` lower than the highest accepted for
    ``bundle_id``; with ``record``, remember ``version`` when it is the highest so far.

    Call it only for a manifest whose signature was verified against a trusted key.
    """
    path = accepted_versions_path()
    if not record:
        accepted = read_accepted_versions(path).get(bundle_id)
        if accepted is not None and version < accepted:
            raise _refuse(bundle, bundle_id, version, accepted, path)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The lock file is never removed: removing it would let two processes hold "the" lock on two files.
        with FileLock(str(path) + ".lock", timeout=_LOCK_TIMEOUT_S):
            versions = read_accepted_versions(path)
            accepted = versions.get(bundle_id)
            if accepted is not None and version < accepted:
                raise _refuse(bundle, bundle_id, version, accepted, path)
            if accepted is None or version > accepted:
                versions[bundle_id] = version
                _write(path, versions)
    except Timeout:
        raise BundleError(f"another process has held the lock on {str(path)!r} for {_LOCK_TIMEOUT_S:.0f} s while "
                          "opening a bundle; wait for it to finish (or stop it) and try again") from None
    except OSError as exc:
        if exc.errno in _FULL:
            raise StorageFullError(f"cannot record the accepted bundle version in {str(path)!r}: the disk is full; "
                                   "the previous record is unchanged. Free some space and try again") from exc
        raise BundleError(
            f"cannot record the accepted bundle version in {str(path)!r}: {exc.strerror or exc}; make the folder "
            f"writable or point {STATE_DIR_VARIABLE} at a writable folder") from exc
