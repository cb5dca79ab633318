"""Checking a bundle's files against its manifest: fully (hash every file) or by stamp (hash what changed).

A full check reads every byte: for a 1 GB bundle that is seconds at every start. So after a check passes,
the device records a *stamp* for the bundle, outside it (``<state dir>/stamps/<sha256 of the real
path>.json``): the sha256 of the manifest's bytes and, per file, (size, mtime_ns, ctime_ns, inode, device)
as they were when the file was hashed. A later open at the ``stamp`` level stats every file and re-hashes
only those whose tuple changed. Any ordinary write changes the size, the modification time or (the kernel
sets it, ``touch`` cannot restore it) the change time; a replaced file has a new inode; a copy is a new
path with no stamp. See docs/bundle-integrity.md for what this does and does not protect against.

A file whose change time was within :data:`TIMESTAMP_SLACK_NS` of the moment it was checked is never
trusted from the stamp ("racy", as git calls it): a write in the same timestamp tick as the check could
leave every field equal. It is re-hashed at the next open, after which it is old enough.

A stamp that cannot be read or does not have the expected shape is ignored (a full check, then a new one
is written); one that cannot be written is logged and the open goes on (the check itself passed).
Standard library only: the device imports this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edge_sdk.bundle.atomic import atomic_write_text
from edge_sdk.bundle.manifest import Manifest
from edge_sdk.bundle.paths import RESERVED, outside_target
from edge_sdk.bundle.state_dir import state_dir
from edge_sdk.errors import BundleIntegrityError, ConfigError

Level = Literal["full", "stamp", "none"]
LEVELS: tuple[str, ...] = ("full", "stamp", "none")
STAMP_FORMAT = 1
STAMPS_FOLDER = "stamps"
# Coarser than any file system's timestamp granularity that matters here (FAT: 2 s; ext4, XFS, btrfs, APFS:
# nanoseconds to a clock tick).
TIMESTAMP_SLACK_NS = 2_000_000_000
_CHUNK = 1 << 20
_log = logging.getLogger(__name__)

FileKey = tuple[int, int, int, int, int]  # (size, mtime_ns, ctime_ns, inode, device)


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes (read in 1 MiB pieces)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _now_ns() -> int:
    return time.time_ns()


def verification_level(verify: bool | str | None) -> Level:
    """The level a caller asked for: True (the old default) is ``stamp``, False or None is ``none``."""
    if verify is True:
        return "stamp"
    if verify is False or verify is None:
        return "none"
    if verify in LEVELS:
        return verify  # type: ignore[return-value]
    raise ConfigError(f"unknown verification level {verify!r}; use one of {', '.join(LEVELS)} (or True/False)")


def file_key(status: os.stat_result) -> FileKey:
    return (status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino, status.st_dev)


@dataclass
class Stamp:
    """What a passed check saw: the manifest's hash, when it checked, each file's stat tuple."""

    bundle: str
    manifest_sha256: str
    checked_ns: int
    files: dict[str, FileKey] = field(default_factory=dict)

    def trusts(self, path: str, key: FileKey) -> bool:
        """Whether ``path``, now stat'ed as ``key``, is the file that was hashed (and not racily so)."""
        recorded = self.files.get(path)
        return recorded == key and key[2] + TIMESTAMP_SLACK_NS < self.checked_ns

    def to_json(self) -> str:
        return json.dumps({"format": STAMP_FORMAT, "bundle": self.bundle, "manifest_sha256": self.manifest_sha256,
                           "checked_ns": self.checked_ns, "files": {k: list(v) for k, v in self.files.items()}},
                          indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Stamp | None:
        """The stamp in ``text``, or None when it is not a stamp of this format (it is then ignored)."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != STAMP_FORMAT:
                return None
            files = {}
            for path, key in data["files"].items():
                if not (isinstance(path, str) and isinstance(key, list) and len(key) == 5
                        and all(type(value) is int for value in key)):
                    return None
                files[path] = tuple(key)
            bundle, manifest_sha256, checked_ns = data["bundle"], data["manifest_sha256"], data["checked_ns"]
            if not (isinstance(bundle, str) and isinstance(manifest_sha256, str) and type(checked_ns) is int):
                return None
            return cls(bundle=bundle, manifest_sha256=manifest_sha256, checked_ns=checked_ns, files=files)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def stamp_path(root: Path) -> Path:
    """Where the stamp of the bundle at (real path) ``root`` lives."""
    name = hashlib.sha256(os.fsencode(str(root))).hexdigest()
    return state_dir() / STAMPS_FOLDER / f"{name}.json"


def load_stamp(root: Path, manifest_sha256: str) -> Stamp | None:
    """The bundle's stamp if there is a readable one for these exact manifest bytes, else None."""
    try:
        text = stamp_path(root).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    stamp = Stamp.from_json(text)
    if stamp is None:
        _log.info("ignoring the malformed verification stamp %s", stamp_path(root))
        return None
    if stamp.bundle != str(root) or stamp.manifest_sha256 != manifest_sha256:
        return None
    return stamp


def save_stamp(stamp: Stamp) -> None:
    """Write the stamp atomically; a failure (read-only or full state folder) costs a full check next time."""
    path = stamp_path(Path(stamp.bundle))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, stamp.to_json())
    except OSError as exc:
        _log.warning("could not write the verification stamp %s (%s); the next open checks every file again",
                     path, exc.strerror or exc)


@dataclass(frozen=True)
class VerificationReport:
    """What a check did: which files it hashed and which it trusted from the stamp."""

    level: Level
    hashed: tuple[str, ...]
    trusted: tuple[str, ...]


def verify_files(root: Path, manifest: Manifest, manifest_bytes: bytes, level: Level) -> VerificationReport:
    """Check the files ``manifest`` lists under the real bundle folder ``root`` at ``level`` ("full" or
    "stamp"); raise a BundleIntegrityError naming every file that is missing, not a regular file, of another
    size, changed, or reached through a symlink out of the bundle. A passed check refreshes the stamp."""
    if level not in ("full", "stamp"):
        raise ValueError(f"verify_files checks at 'full' or 'stamp', not {level!r}")
    manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
    previous = load_stamp(root, manifest_sha256) if level == "stamp" else None
    started = _now_ns()  # before any stat: a conservative "checked at" for the racy rule
    problems: list[str] = []
    hashed: list[str] = []
    trusted: list[str] = []
    keys: dict[str, FileKey] = {}
    for entry in manifest.files:
        # The manifest reader already refused names that leave the folder; this catches symlinks that do.
        escape = outside_target(root, entry.path)
        if escape is not None:
            problems.append(f"{entry.path}: resolves to {str(escape)!r}, outside the bundle folder (a symlink "
                            "leads out of it)")
            continue
        path = root / entry.path
        try:
            status = os.stat(path)
        except FileNotFoundError:
            problems.append(f"{entry.path}: missing")
            continue
        except OSError as exc:
            problems.append(f"{entry.path}: cannot be read ({exc.strerror or exc})")
            continue
        if not stat.S_ISREG(status.st_mode):
            problems.append(f"{entry.path}: not a regular file")
            continue
        if status.st_size != entry.size:
            problems.append(f"{entry.path}: content changed since the build ({status.st_size} bytes, the "
                            f"manifest says {entry.size})")
            continue
        key = file_key(status)
        if previous is not None and previous.trusts(entry.path, key):
            trusted.append(entry.path)
        else:
            try:
                digest = sha256_file(path)
            except OSError as exc:
                problems.append(f"{entry.path}: cannot be read ({exc.strerror or exc})")
                continue
            hashed.append(entry.path)
            if digest != entry.sha256:
                problems.append(f"{entry.path}: content changed since the build (sha256 mismatch)")
                continue
        keys[entry.path] = key
    if level == "full" and manifest.unlisted_files == "refuse":
        problems.extend(f"{path}: not listed in the manifest (its unlisted_files is 'refuse')"
                        for path in unlisted_files(root, manifest))
    if problems:
        raise BundleIntegrityError(
            f"bundle {str(root)!r} failed verification: " + "; ".join(problems)
            + ". Rebuild the bundle or copy it again from its source."
        )
    if hashed or previous is None or previous.files != keys:
        save_stamp(Stamp(bundle=str(root), manifest_sha256=manifest_sha256, checked_ns=started, files=keys))
    return VerificationReport(level=level, hashed=tuple(hashed), trusted=tuple(trusted))


def unlisted_files(root: Path, manifest: Manifest) -> list[str]:
    """Bundle paths of every entry under ``root`` that is not a folder and that the manifest neither lists nor
    allows (under one of its ``writable_paths``; ``manifest.json``, ``manifest.sig``), sorted. Symlinks are
    not followed (an unlisted one is itself reported); writable folders are not entered (a compile cache can
    be large). A folder that cannot be listed is reported as a problem too: what it holds is unknown."""
    listed = {entry.path for entry in manifest.files} | set(RESERVED)
    writable = tuple(manifest.writable_paths)
    found: list[str] = []
    pending = [""]  # an explicit stack: no recursion depth that depends on the bundle
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(root / folder if folder else root) as entries:
                children = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
        except OSError as exc:
            found.append(f"{folder or '.'} (cannot be listed: {exc.strerror or exc})")
            continue
        for name, is_folder in children:
            relative = f"{folder}{name}"
            if is_folder:
                if not (writable and f"{relative}/".startswith(writable)):
                    pending.append(f"{relative}/")
            elif relative not in listed and not (writable and relative.startswith(writable)):
                found.append(relative)
    return sorted(found)


def record_stamp(root: Path, manifest: Manifest, manifest_bytes: bytes) -> None:
    """Stamp a bundle whose files the caller has just hashed itself (``unpack`` hashed them while writing)."""
    started = _now_ns()
    keys = {entry.path: file_key(os.stat(root / entry.path)) for entry in manifest.files}
    save_stamp(Stamp(bundle=str(root), manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
                     checked_ns=started, files=keys))
