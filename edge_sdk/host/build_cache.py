"""A content-addressed cache of built bundles, so an unchanged rebuild in a firmware pipeline takes seconds.

The key is the sha256 of everything a build is a function of (``build_inputs``): the resolved settings, the
hash of every input file, the versions of the SDK and of the libraries that write bundle bytes, the signing
key's id and ``SOURCE_DATE_EPOCH``. Any change to any of them misses. An entry is a finished bundle folder
(manifest, signature, files) plus ``entry.json``; a hit copies it to ``--out`` through the same atomic writer a
build uses, hashing every file on the way and comparing with the entry's manifest, so a damaged entry is
dropped and rebuilt, never shipped.

Where: ``--cache-dir``, else ``$EDGE_SDK_CACHE_DIR``, else ``$XDG_CACHE_HOME/edge-sdk/builds`` (by default
``~/.cache/edge-sdk/builds``). Size: entries used least recently are removed once the cache holds more than
``$EDGE_SDK_CACHE_MAX_BYTES`` (default 10 GiB). A cache that cannot be written never fails a build: it warns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_sdk.bundle.atomic import fsync_tree, remove_folder
from edge_sdk.bundle.layout import MANIFEST, SIGNATURE
from edge_sdk.bundle.manifest import Manifest
from edge_sdk.bundle.source_date import source_date_epoch
from edge_sdk.bundle.store import BundleWriter
from edge_sdk.errors import ConfigError
from edge_sdk.host.build_inputs import InputFile, portable_name, shaping_versions
from edge_sdk.host.config import BuildConfig

CACHE_FORMAT = 1
CACHE_DIR_VARIABLE = "EDGE_SDK_CACHE_DIR"
MAX_BYTES_VARIABLE = "EDGE_SDK_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 10 << 30
_ENTRY = "entry.json"
_BUNDLE = "bundle"
_log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_VARIABLE):
        return Path(os.environ[CACHE_DIR_VARIABLE])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edge-sdk" / "builds"


def max_cache_bytes() -> int:
    value = os.environ.get(MAX_BYTES_VARIABLE)
    if not value:
        return DEFAULT_MAX_BYTES
    if not value.isdigit():
        raise ConfigError(f"{MAX_BYTES_VARIABLE}={value!r} is not a number of bytes; e.g. 10737418240 for 10 GiB")
    return int(value)


def cache_key(config: BuildConfig, inputs: list[InputFile], signed_by: str | None) -> str:
    """The sha256 naming the bundle these settings, inputs, software versions and key would build."""
    settings: dict[str, Any] = asdict(config)
    # Paths say where inputs are, not what they hold; their contents are in ``inputs``. What the manifest records
    # of a source (its portable name, the bundle id made from it) stays in the key.
    for where in ("model_dir", "recipe", "adapter_from", "calibration_data"):
        settings.pop(where, None)
    settings["profile"] = portable_name(config.profile)
    settings["source_description"] = portable_name(config.source_description or str(config.model_dir))
    settings["bundle_id"] = config.resolved_bundle_id
    material = {
        "format": CACHE_FORMAT,
        "settings": settings,
        "inputs": sorted((item.role, item.name, item.sha256) for item in inputs if item.role != "signing-key"),
        "versions": shaping_versions(),
        "signed_by": signed_by,
        "source_date_epoch": source_date_epoch(),
    }
    encoded = json.dumps(material, sort_keys=True, default=str, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    key: str
    folder: Path
    build_seconds: float

    @property
    def bundle(self) -> Path:
        return self.folder / _BUNDLE


class BuildCache:
    """Finished bundles by cache key under ``root``."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def lookup(self, key: str) -> CacheEntry | None:
        folder = self.root / key
        try:
            entry = json.loads((folder / _ENTRY).read_text(encoding="utf-8"))
            if entry.get("format") != CACHE_FORMAT or entry.get("key") != key:
                return None
            return CacheEntry(key=key, folder=folder, build_seconds=float(entry["build_seconds"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def publish(self, entry: CacheEntry, out: str | os.PathLike, overwrite: bool) -> Path | None:
        """Copy a cached bundle to ``out`` atomically, hashing each file against the entry's manifest. A damaged
        entry is removed and None returned (the caller builds instead); ``out`` is then as it was."""
        with BundleWriter(out, overwrite=overwrite) as writer:
            try:
                manifest_bytes = (entry.bundle / MANIFEST).read_bytes()
                manifest = Manifest.from_json(manifest_bytes.decode("utf-8"), source=str(entry.bundle / MANIFEST))
                writer.add_bytes(manifest_bytes, MANIFEST)
                if (entry.bundle / SIGNATURE).is_file():
                    writer.add_bytes((entry.bundle / SIGNATURE).read_bytes(), SIGNATURE)
                for listed in manifest.files:
                    if _copy_hashed(entry.bundle / listed.path, writer.path(listed.path)) != listed.sha256:
                        raise ValueError(f"{listed.path} changed in the cache")
            except (OSError, ValueError) as exc:  # BundleError is a ValueError too
                _log.warning("build cache entry %s is damaged (%s); removing it and building", entry.folder, exc)
                remove_folder(entry.folder)
                return None
            path = writer.publish()
        _touch(entry.folder / _ENTRY)
        return path

    def store(self, key: str, bundle: Path, build_seconds: float) -> None:
        """Keep a copy of a just-built bundle under ``key``; a cache that cannot be written only warns."""
        if (self.root / key).is_dir():
            return
        staging = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            staging = Path(self._staging_name(key))
            shutil.copytree(bundle, staging / _BUNDLE)
            entry = {"format": CACHE_FORMAT, "key": key, "build_seconds": build_seconds, "stored": time.time()}
            (staging / _ENTRY).write_text(json.dumps(entry, sort_keys=True), encoding="utf-8")
            fsync_tree(staging)
            os.rename(staging, self.root / key)
            staging = None
            self.prune(max_cache_bytes(), keep=key)
        except OSError as exc:
            if (self.root / key / _ENTRY).is_file():
                return  # a concurrent build of the same inputs stored it first: the same bytes
            _log.warning("could not store the bundle in the build cache %s (%s); the next build of the same inputs "
                         "builds again", self.root, exc.strerror or exc)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)

    def _staging_name(self, key: str) -> str:
        return str(self.root / f".{key[:16]}.{os.getpid()}.{time.monotonic_ns()}.tmp")

    def entries(self) -> list[tuple[Path, int, float]]:
        """(folder, bytes, last used) of every entry, least recently used first."""
        found = []
        if not self.root.is_dir():
            return found
        for folder in self.root.iterdir():
            if folder.name.startswith(".") or not (folder / _ENTRY).is_file():
                continue
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            found.append((folder, size, (folder / _ENTRY).stat().st_mtime))
        return sorted(found, key=lambda item: item[2])

    def prune(self, max_bytes: int, keep: str | None = None) -> list[Path]:
        """Remove entries used least recently until the cache holds at most ``max_bytes``; never ``keep``."""
        entries = self.entries()
        total = sum(size for _folder, size, _used in entries)
        removed = []
        for folder, size, _used in entries:
            if total <= max_bytes:
                break
            if folder.name == keep:
                continue
            remove_folder(folder)
            total -= size
            removed.append(folder)
        return removed

    def clear(self) -> int:
        """Remove every entry (and leftovers of interrupted stores); the number of entries removed."""
        if not self.root.is_dir():
            return 0
        count = 0
        for folder in self.root.iterdir():
            if folder.is_dir():
                count += not folder.name.startswith(".")
                remove_folder(folder)
        return count


def _copy_hashed(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(target, "wb") as writer:
        for block in iter(lambda: reader.read(1 << 20), b""):
            digest.update(block)
            writer.write(block)
    return digest.hexdigest()


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only cache still serves hits; it just forgets which was used last
