"""Reading, verifying and writing bundles on disk (packing and unpacking: archive.py).

Writing is atomic: files are staged in a hidden sibling folder and renamed into place only after the
manifest (with every file's sha256) is written, so a failed build never leaves a bundle behind.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from edge_sdk.bundle.atomic import default_permissions, replace_folder, staging_folder
from edge_sdk.bundle.layout import SIGNATURE
from edge_sdk.bundle.manifest import MANIFEST_NAME, FileEntry, Manifest
from edge_sdk.bundle.paths import resolve_inside
from edge_sdk.bundle.trust import Trust, read_trusted_manifest
from edge_sdk.bundle.verification import Level, sha256_file, verification_level, verify_files
from edge_sdk.errors import BundleError


@dataclass(frozen=True)
class Bundle:
    """An opened bundle: its root folder (the real path) and parsed manifest."""

    root: Path
    manifest: Manifest

    def path(self, relative: str) -> Path:
        """Path of a file the manifest lists, checked to stay inside the bundle folder (symlinks followed).

        Every file the runtime opens from a bundle (graphs, weights, tokenizer, training artifacts, the
        initial adapter) comes through here; raises if the manifest lists no such file or it leads out."""
        self.manifest.file(relative)
        return resolve_inside(self.root, relative)

    def inside(self, relative: str, what: str = "file") -> Path:
        """Path of a file the manifest does not list (the adapter store's), with the same check."""
        return resolve_inside(self.root, relative, what)


def read_manifest_bytes(root: Path, trust: Trust = None) -> tuple[bytes, Manifest]:
    """The manifest's exact bytes (what a stamp or a signature covers) and the manifest parsed from them; under
    a trust policy (``trust``, None: ``EDGE_SDK_TRUSTED_KEYS``) only after its signature and version are
    accepted (:mod:`edge_sdk.bundle.trust`), before any other file of the bundle is read."""
    if not root.exists():
        raise BundleError(f"bundle folder {str(root)!r} does not exist; build one with `edge-sdk build`")
    if not root.is_dir():
        raise BundleError(f"{str(root)!r} is a file; pass the bundle folder (the one holding {MANIFEST_NAME})")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(
            f"{str(root)!r} is not a bundle: it has no {MANIFEST_NAME}; point at the folder `edge-sdk build` wrote"
        )
    return read_trusted_manifest(manifest_path, trust)


def read_manifest(root: str | os.PathLike, trust: Trust = None) -> Manifest:
    """The bundle's manifest, parsed and its file paths checked (no file is hashed); ``trust``: see
    :func:`read_manifest_bytes`."""
    return read_manifest_bytes(Path(root), trust)[1]


def verify_bundle(root: str | os.PathLike, trust: Trust = None) -> Manifest:
    """Hash every file the manifest lists and compare with its recorded sha256; raise naming each bad file.
    A passed check refreshes the bundle's verification stamp."""
    return _open(Path(root), "full", trust).manifest


def open_bundle(root: str | os.PathLike, verify: bool | str = True, trust: Trust = None) -> Bundle:
    """Open a bundle folder, checking its files at ``verify``: "full" hashes every file; "stamp" (also
    ``True``) re-hashes only files changed since the last passed check (all of them when there is none);
    "none" (also ``False``) hashes nothing. At every level each listed file must stay inside the folder, and
    under a trust policy (``trust``; see :func:`read_manifest_bytes`) the manifest must be signed by a trusted key.
    """
    return _open(Path(root), verification_level(verify), trust)


def _open(root: Path, level: Level, trust: Trust) -> Bundle:
    manifest_bytes, manifest = read_manifest_bytes(root, trust)
    real = root.resolve()
    if level == "none":
        for entry in manifest.files:  # a realpath each: cheap, and no listed file may lead out of the folder
            resolve_inside(real, entry.path)
    else:
        verify_files(real, manifest, manifest_bytes, level)
    return Bundle(root=real, manifest=manifest)


class BundleWriter:
    """Stage a bundle's files, then publish them atomically with :meth:`commit`.

    Use as a context manager: leaving the block without committing (an exception) removes the staging
    folder, so nothing half-written remains at the destination.
    """

    def __init__(self, destination: str | os.PathLike, overwrite: bool = False) -> None:
        self.destination = Path(destination).resolve()
        where = str(self.destination)
        if self.destination.exists():
            if not self.destination.is_dir():
                raise BundleError(f"output path {where!r} is a file; choose a folder path for --out")
            if not overwrite:
                raise BundleError(f"output folder {where!r} already exists; choose another --out or pass --overwrite")
            if not (self.destination / MANIFEST_NAME).is_file() and any(self.destination.iterdir()):
                raise BundleError(
                    f"output folder {where!r} exists, is not empty and is not a bundle; refusing to replace it, "
                    "choose another --out"
                )
        try:
            self.staging = staging_folder(self.destination)
        except OSError as exc:
            raise BundleError(f"cannot create the output folder {where!r}: {exc.strerror or exc}") from exc
        self._committed = False

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._committed:
            shutil.rmtree(self.staging, ignore_errors=True)

    def path(self, relative: str) -> Path:
        """Where to write ``relative`` inside the staging folder (parent folders are created)."""
        target = self.staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def folder(self, relative: str) -> Path:
        """A folder inside the staging area (created), for tools that write several files at once."""
        target = self.staging / relative
        target.mkdir(parents=True, exist_ok=True)
        return target

    def add_file(self, source: str | os.PathLike, relative: str) -> Path:
        target = self.path(relative)
        shutil.copyfile(source, target)
        return target

    def add_bytes(self, data: bytes, relative: str) -> Path:
        target = self.path(relative)
        target.write_bytes(data)
        return target

    def staged(self, manifest: Manifest) -> Bundle:
        """The staged files as an opened bundle (hashes filled in), to test them before committing."""
        self._hash_files(manifest)
        return Bundle(root=self.staging, manifest=manifest)

    def _hash_files(self, manifest: Manifest) -> None:
        entries = []
        for file_path in sorted(p for p in self.staging.rglob("*") if p.is_file()):
            relative = file_path.relative_to(self.staging).as_posix()
            if relative in (MANIFEST_NAME, SIGNATURE):
                continue
            entries.append(FileEntry(path=relative, sha256=sha256_file(file_path), size=file_path.stat().st_size))
        manifest.files = entries

    def commit(self, manifest: Manifest, signer: Callable[[bytes], bytes] | None = None) -> Path:
        """Hash every staged file into ``manifest``, write it, and move the bundle into place.

        ``signer`` turns the manifest's bytes into the contents of its signature file (``signing.signature_file``);
        it signs in the staging folder, so a failure to sign leaves any previous bundle in place.
        """
        self._hash_files(manifest)
        manifest_bytes = manifest.to_json().encode("utf-8")
        (self.staging / MANIFEST_NAME).write_bytes(manifest_bytes)
        if signer is not None:
            (self.staging / SIGNATURE).write_bytes(signer(manifest_bytes))
        return self.publish()

    def publish(self) -> Path:
        """Move the staging folder into place as it is: its manifest is already there (``commit`` wrote it, or
        the caller copied a finished bundle in, as the build cache does)."""
        # A tool that wrote into the staging folder through mkstemp/mkdtemp left its files private (0600/0700).
        for path in [self.staging, *self.staging.rglob("*")]:
            default_permissions(path)
        replace_folder(self.staging, self.destination)
        self._committed = True
        return self.destination


def __getattr__(name: str):
    # pack_bundle moved to archive.py (which imports this module); still importable from here, lazily.
    if name == "pack_bundle":
        from edge_sdk.bundle.archive import pack_bundle

        return pack_bundle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
